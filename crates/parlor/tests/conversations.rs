//! Conversations, end to end against the real `parlor` binary: direct conversations,
//! groups with owner/admin/member roles, leaving, the member limit, the conversation
//! list (last message, unread counts, order), access checks and live member events.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_api, start, start_default, WAIT};
use parlor_client::proto::rest::{
    ConversationDetail, ConversationInfo, ConversationKind, ConversationSummary, Role, UserView,
};
use parlor_client::proto::ws::{MemberChange, MemberEvent, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{Http, WsClient};
use parlor_testkit::{unique_name, user, ServerOptions};
use std::time::Duration;

/// A registered and logged-in user.
struct U {
    view: UserView,
    token: String,
}

impl U {
    fn id(&self) -> Id {
        self.view.id
    }
}

async fn new_user(http: &Http, prefix: &str) -> U {
    let (view, tokens) = user(http, &unique_name(prefix)).await.unwrap();
    U {
        view,
        token: tokens.access_token,
    }
}

/// POST /v1/conversations/direct, returning the status as well as the conversation.
async fn open_direct_raw(http: &Http, token: &str, other: Id) -> (u16, ConversationInfo) {
    let body = serde_json::to_vec(&serde_json::json!({ "user_id": other })).unwrap();
    let (status, text) = http
        .post_raw(
            "/v1/conversations/direct",
            Some(token),
            "application/json",
            body,
        )
        .await
        .unwrap();
    assert!(
        status == 200 || status == 201,
        "open direct: {status} {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

/// The roles in a conversation, as (user id, role) sorted by user id.
fn roles(detail: &ConversationDetail) -> Vec<(Id, Role)> {
    let mut roles: Vec<(Id, Role)> = detail.members.iter().map(|m| (m.user.id, m.role)).collect();
    roles.sort_by_key(|(id, _)| *id);
    roles
}

fn sorted(mut v: Vec<(Id, Role)>) -> Vec<(Id, Role)> {
    v.sort_by_key(|(id, _)| *id);
    v
}

/// Waits for the next `member` frame, skipping others.
async fn next_member(ws: &mut WsClient) -> MemberEvent {
    ws.wait_for(WAIT, |f| match f {
        ServerFrame::Member(m) => Some(m.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

fn summary(list: &[ConversationSummary], conv: Id) -> &ConversationSummary {
    list.iter()
        .find(|c| c.info.id == conv)
        .unwrap_or_else(|| panic!("conversation {conv} not in the list"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_conversation_is_one_per_pair_created_once_then_returned() {
    let server = start_default();
    let http = server.http();
    let alice = new_user(&http, "alice").await;
    let bob = new_user(&http, "bob").await;

    let (status, first) = open_direct_raw(&http, &alice.token, bob.id()).await;
    assert_eq!(status, 201, "first request creates it");
    assert_eq!(first.kind, ConversationKind::Direct);
    assert_eq!(first.name, None);

    let (status, again) = open_direct_raw(&http, &alice.token, bob.id()).await;
    assert_eq!((status, again.id), (200, first.id), "asking again");
    let (status, reverse) = open_direct_raw(&http, &bob.token, alice.id()).await;
    assert_eq!(
        (status, reverse.id),
        (200, first.id),
        "asking from the other side"
    );
    assert_eq!(
        http.open_direct(&bob.token, alice.id()).await.unwrap().id,
        first.id
    );

    // Exactly the two of them.
    let detail = http.conversation(&alice.token, first.id).await.unwrap();
    let mut members: Vec<Id> = detail.members.iter().map(|m| m.user.id).collect();
    members.sort();
    let mut want = vec![alice.id(), bob.id()];
    want.sort();
    assert_eq!(members, want);

    // Each sees the other as the peer, and only one direct conversation with them.
    let bobs = http.conversations(&bob.token).await.unwrap().conversations;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].peer.as_ref(), Some(&alice.view));
    assert_eq!(bobs[0].member_count, 2);
    let alices = http
        .conversations(&alice.token)
        .await
        .unwrap()
        .conversations;
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].peer.as_ref(), Some(&bob.view));

    // Membership of a direct conversation is fixed.
    let carol = new_user(&http, "carol").await;
    expect_api(
        http.add_member(&alice.token, first.id, carol.id()).await,
        403,
        ErrorCode::Forbidden,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_with_oneself_is_conflict_and_with_unknown_user_not_found() {
    let server = start_default();
    let http = server.http();
    let alice = new_user(&http, "alice").await;

    expect_api(
        http.open_direct(&alice.token, alice.id()).await,
        409,
        ErrorCode::Conflict,
    );
    expect_api(
        http.open_direct(&alice.token, Id(987_654_321_012)).await,
        404,
        ErrorCode::NotFound,
    );
    assert!(http
        .conversations(&alice.token)
        .await
        .unwrap()
        .conversations
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_roles_decide_who_may_add_remove_and_promote() {
    let server = start_default();
    let http = server.http();
    let owner = new_user(&http, "owner").await;
    let admin = new_user(&http, "admin").await;
    let admin2 = new_user(&http, "admin2").await;
    let m1 = new_user(&http, "m1").await;
    let m2 = new_user(&http, "m2").await;
    let m3 = new_user(&http, "m3").await;

    let group = http
        .create_group(
            &owner.token,
            "  Team  ",
            &[admin.id(), admin2.id(), m1.id()],
        )
        .await
        .unwrap();
    assert_eq!(group.kind, ConversationKind::Group);
    assert_eq!(group.name.as_deref(), Some("Team"));
    let detail = http.conversation(&owner.token, group.id).await.unwrap();
    assert_eq!(detail.info, group);
    assert_eq!(
        roles(&detail),
        sorted(vec![
            (owner.id(), Role::Owner),
            (admin.id(), Role::Member),
            (admin2.id(), Role::Member),
            (m1.id(), Role::Member),
        ])
    );

    // The owner promotes two members to admin.
    http.set_role(&owner.token, group.id, admin.id(), Role::Admin)
        .await
        .unwrap();
    http.set_role(&owner.token, group.id, admin2.id(), Role::Admin)
        .await
        .unwrap();
    // Ownership cannot be handed over or taken through the role call.
    expect_api(
        http.set_role(&owner.token, group.id, m1.id(), Role::Owner)
            .await,
        403,
        ErrorCode::Forbidden,
    );
    // Only the owner changes roles.
    expect_api(
        http.set_role(&admin.token, group.id, m1.id(), Role::Admin)
            .await,
        403,
        ErrorCode::Forbidden,
    );

    // An admin adds and removes plain members.
    http.add_member(&admin.token, group.id, m2.id())
        .await
        .unwrap();
    http.remove_member(&admin.token, group.id, m1.id())
        .await
        .unwrap();

    // A plain member may neither add nor remove.
    expect_api(
        http.add_member(&m2.token, group.id, m3.id()).await,
        403,
        ErrorCode::Forbidden,
    );
    expect_api(
        http.remove_member(&m2.token, group.id, admin.id()).await,
        403,
        ErrorCode::Forbidden,
    );

    // An admin may remove neither another admin nor the owner.
    expect_api(
        http.remove_member(&admin.token, group.id, admin2.id())
            .await,
        403,
        ErrorCode::Forbidden,
    );
    expect_api(
        http.remove_member(&admin.token, group.id, owner.id()).await,
        403,
        ErrorCode::Forbidden,
    );
    // Adding a user who does not exist.
    expect_api(
        http.add_member(&admin.token, group.id, Id(987_654_321_012))
            .await,
        404,
        ErrorCode::NotFound,
    );

    let detail = http.conversation(&m2.token, group.id).await.unwrap();
    assert_eq!(
        roles(&detail),
        sorted(vec![
            (owner.id(), Role::Owner),
            (admin.id(), Role::Admin),
            (admin2.id(), Role::Admin),
            (m2.id(), Role::Member),
        ])
    );
    // The member list is ordered owner, admins, members.
    assert_eq!(detail.members[0].role, Role::Owner);
    assert_eq!(detail.members[3].role, Role::Member);
    expect_api(
        http.conversation(&m1.token, group.id).await,
        403,
        ErrorCode::NotMember,
    );

    // The owner removes an admin.
    http.remove_member(&owner.token, group.id, admin2.id())
        .await
        .unwrap();
    expect_api(
        http.conversation(&admin2.token, group.id).await,
        403,
        ErrorCode::NotMember,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leave_and_a_leaving_owner_hands_ownership_to_an_admin() {
    let server = start_default();
    let http = server.http();
    let owner = new_user(&http, "owner").await;
    let a = new_user(&http, "a").await;
    let b = new_user(&http, "b").await;
    let c = new_user(&http, "c").await;
    let group = http
        .create_group(&owner.token, "club", &[a.id(), b.id()])
        .await
        .unwrap();
    // c joins last but becomes admin: the admin, not the longest-standing member, takes
    // over.
    http.add_member(&owner.token, group.id, c.id())
        .await
        .unwrap();
    http.set_role(&owner.token, group.id, c.id(), Role::Admin)
        .await
        .unwrap();
    http.send(&owner.token, group.id, Some("o-1"), "before anyone left")
        .await
        .unwrap();

    // A member leaves.
    http.leave(&b.token, group.id).await.unwrap();
    expect_api(
        http.conversation(&b.token, group.id).await,
        403,
        ErrorCode::NotMember,
    );
    expect_api(
        http.send(&b.token, group.id, Some("b-1"), "still here?")
            .await,
        403,
        ErrorCode::NotMember,
    );
    assert!(http
        .conversations(&b.token)
        .await
        .unwrap()
        .conversations
        .is_empty());

    // The owner leaves: the admin becomes the owner.
    http.leave(&owner.token, group.id).await.unwrap();
    expect_api(
        http.conversation(&owner.token, group.id).await,
        403,
        ErrorCode::NotMember,
    );
    let detail = http.conversation(&a.token, group.id).await.unwrap();
    assert_eq!(
        roles(&detail),
        sorted(vec![(a.id(), Role::Member), (c.id(), Role::Owner)])
    );
    // And acts as one.
    http.set_role(&c.token, group.id, a.id(), Role::Admin)
        .await
        .unwrap();

    // The remaining members keep talking.
    http.send(&a.token, group.id, Some("a-1"), "carry on")
        .await
        .unwrap();
    let history = http
        .history(&c.token, group.id, None, None, None)
        .await
        .unwrap();
    let texts: Vec<&str> = history.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["before anyone left", "carry on"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_limit_applies_to_creating_and_adding() {
    let server = start(ServerOptions::default().with_env("PARLOR_LIMITS__MEMBER_LIMIT", "3"));
    let http = server.http();
    let owner = new_user(&http, "owner").await;
    let a = new_user(&http, "a").await;
    let b = new_user(&http, "b").await;
    let c = new_user(&http, "c").await;

    // The owner counts: owner + 3 others is 4 > 3.
    expect_api(
        http.create_group(&owner.token, "big", &[a.id(), b.id(), c.id()])
            .await,
        409,
        ErrorCode::MemberLimit,
    );
    let group = http
        .create_group(&owner.token, "full", &[a.id(), b.id()])
        .await
        .unwrap();
    expect_api(
        http.add_member(&owner.token, group.id, c.id()).await,
        409,
        ErrorCode::MemberLimit,
    );
    let detail = http.conversation(&owner.token, group.id).await.unwrap();
    assert_eq!(detail.members.len(), 3);

    // Room frees up when someone leaves.
    http.leave(&b.token, group.id).await.unwrap();
    http.add_member(&owner.token, group.id, c.id())
        .await
        .unwrap();
    assert_eq!(
        http.conversation(&c.token, group.id)
            .await
            .unwrap()
            .members
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_list_shows_last_message_unread_counts_and_activity_order() {
    let server = start_default();
    let http = server.http();
    let alice = new_user(&http, "alice").await;
    let bob = new_user(&http, "bob").await;

    let direct = http.open_direct(&alice.token, bob.id()).await.unwrap();
    // Distinct millisecond timestamps, so that "most recent first" has one answer.
    let tick = || tokio::time::sleep(Duration::from_millis(20));
    tick().await;
    let group = http
        .create_group(&bob.token, "group", &[alice.id()])
        .await
        .unwrap();

    // Nothing sent yet: the newer conversation comes first, nothing unread.
    let list = http.conversations(&bob.token).await.unwrap().conversations;
    let ids: Vec<Id> = list.iter().map(|c| c.info.id).collect();
    assert_eq!(ids, [group.id, direct.id]);
    for c in &list {
        assert_eq!((c.unread, c.last_seq, c.read_seq), (0, 0, 0));
        assert_eq!(c.last_message, None);
    }
    assert_eq!(summary(&list, group.id).member_count, 2);
    assert_eq!(summary(&list, group.id).info.name.as_deref(), Some("group"));

    // Alice writes three messages in the direct conversation.
    tick().await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let ack = http
            .send(&alice.token, direct.id, Some(&format!("d-{i}")), text)
            .await
            .unwrap();
        assert_eq!(ack.seq, i as u64 + 1);
    }
    let list = http.conversations(&bob.token).await.unwrap().conversations;
    assert_eq!(list[0].info.id, direct.id, "most recent activity first");
    let d = summary(&list, direct.id);
    assert_eq!((d.unread, d.last_seq, d.read_seq), (3, 3, 0));
    let last = d.last_message.as_ref().unwrap();
    assert_eq!(
        (last.text.as_str(), last.sender, last.seq),
        ("three", alice.id(), 3)
    );
    assert_eq!(d.peer.as_ref(), Some(&alice.view));
    assert_eq!(summary(&list, group.id).unread, 0);

    // The sender's own messages are never unread for her.
    let alices = http
        .conversations(&alice.token)
        .await
        .unwrap()
        .conversations;
    let d = summary(&alices, direct.id);
    assert_eq!((d.unread, d.last_seq), (0, 3));
    assert_eq!(d.last_message.as_ref().unwrap().text, "three");

    // Bob reads up to 2, then everything.
    let state = http.mark_read(&bob.token, direct.id, 2).await.unwrap();
    assert_eq!((state.conv, state.read_seq), (direct.id, 2));
    let list = http.conversations(&bob.token).await.unwrap().conversations;
    assert_eq!(summary(&list, direct.id).unread, 1);
    http.mark_read(&bob.token, direct.id, 3).await.unwrap();
    // The read marker never moves back.
    let state = http.mark_read(&bob.token, direct.id, 1).await.unwrap();
    assert_eq!(state.read_seq, 3);
    expect_api(
        http.mark_read(&bob.token, direct.id, 4).await,
        400,
        ErrorCode::BadRequest,
    );
    let list = http.conversations(&bob.token).await.unwrap().conversations;
    let d = summary(&list, direct.id);
    assert_eq!((d.unread, d.read_seq), (0, 3));

    // New activity in the group moves it to the top, for both members.
    tick().await;
    http.send(&bob.token, group.id, Some("g-1"), "group news")
        .await
        .unwrap();
    for (who, unread) in [(&bob, 0), (&alice, 1)] {
        let list = http.conversations(&who.token).await.unwrap().conversations;
        let ids: Vec<Id> = list.iter().map(|c| c.info.id).collect();
        assert_eq!(ids, [group.id, direct.id]);
        let g = summary(&list, group.id);
        assert_eq!(g.unread, unread);
        assert_eq!(g.last_message.as_ref().unwrap().text, "group news");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_get_not_member_and_unknown_conversations_not_found() {
    let server = start_default();
    let http = server.http();
    let alice = new_user(&http, "alice").await;
    let bob = new_user(&http, "bob").await;
    let eve = new_user(&http, "eve").await;
    let direct = http.open_direct(&alice.token, bob.id()).await.unwrap();
    let group = http
        .create_group(&alice.token, "private", &[bob.id()])
        .await
        .unwrap();
    http.send(&alice.token, direct.id, Some("s-1"), "secret")
        .await
        .unwrap();

    for conv in [direct.id, group.id] {
        expect_api(
            http.conversation(&eve.token, conv).await,
            403,
            ErrorCode::NotMember,
        );
        expect_api(
            http.history(&eve.token, conv, None, None, None).await,
            403,
            ErrorCode::NotMember,
        );
        expect_api(
            http.send(&eve.token, conv, Some("e-1"), "let me in").await,
            403,
            ErrorCode::NotMember,
        );
        expect_api(
            http.mark_read(&eve.token, conv, 0).await,
            403,
            ErrorCode::NotMember,
        );
        expect_api(
            http.leave(&eve.token, conv).await,
            403,
            if conv == direct.id {
                ErrorCode::Forbidden
            } else {
                ErrorCode::NotMember
            },
        );
    }
    // Eve cannot add herself to the group.
    expect_api(
        http.add_member(&eve.token, group.id, eve.id()).await,
        403,
        ErrorCode::NotMember,
    );

    let unknown = Id(987_654_321_012);
    expect_api(
        http.conversation(&alice.token, unknown).await,
        404,
        ErrorCode::NotFound,
    );
    expect_api(
        http.history(&alice.token, unknown, None, None, None).await,
        404,
        ErrorCode::NotFound,
    );
    expect_api(
        http.send(&alice.token, unknown, Some("u-1"), "anyone?")
            .await,
        404,
        ErrorCode::NotFound,
    );
    expect_api(
        http.add_member(&alice.token, unknown, bob.id()).await,
        404,
        ErrorCode::NotFound,
    );

    // Nothing of the above changed the conversations.
    let history = http
        .history(&bob.token, direct.id, None, None, None)
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].text, "secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_user_receives_member_events_when_added_and_removed() {
    let server = start_default();
    let http = server.http();
    let owner = new_user(&http, "owner").await;
    let u = new_user(&http, "joiner").await;
    let group = http
        .create_group(&owner.token, "lounge", &[])
        .await
        .unwrap();

    let mut ws = server.ws(&u.token, None).await.unwrap();
    ws.wait_synced(WAIT).await.unwrap();

    http.add_member(&owner.token, group.id, u.id())
        .await
        .unwrap();
    let added = next_member(&mut ws).await;
    assert_eq!(added.conv, group.id);
    assert_eq!(added.user, u.id());
    assert_eq!(added.change, MemberChange::Added);
    assert_eq!(added.by, owner.id());
    assert_eq!(added.role, Some(Role::Member));
    // Enough to show the new conversation right away.
    assert_eq!(added.conversation, group);

    // Now a member: live messages arrive too.
    http.send(&owner.token, group.id, Some("w-1"), "welcome")
        .await
        .unwrap();
    let message = ws
        .wait_for(WAIT, |f| match f {
            ServerFrame::Message(m) => Some(m.message.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((message.conv, message.text.as_str()), (group.id, "welcome"));

    http.remove_member(&owner.token, group.id, u.id())
        .await
        .unwrap();
    let removed = next_member(&mut ws).await;
    assert_eq!(
        (removed.conv, removed.user, removed.change, removed.by),
        (group.id, u.id(), MemberChange::Removed, owner.id())
    );
    assert_eq!(removed.role, None);
    assert!(removed.pos > added.pos);
    expect_api(
        http.conversation(&u.token, group.id).await,
        403,
        ErrorCode::NotMember,
    );
}
