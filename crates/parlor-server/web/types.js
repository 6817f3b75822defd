// Shapes of what crosses the wire (docs/protocol.md) and of the client's own state.
// This module holds JSDoc types only; `tsc --checkJs` reads them.

/**
 * @typedef {{ id: string, username: string }} User
 *
 * @typedef {{
 *   access_token: string, expires_in: number, refresh_token: string,
 *   user: User, device_id: string
 * }} TokenPair
 *
 * @typedef {{
 *   access_token: string, refresh_token: string, expires_at: number,
 *   user: User, device_id: string
 * }} Session
 *
 * @typedef {'owner' | 'admin' | 'member'} Role
 *
 * @typedef {{
 *   conv: string, id: string, seq: number, sender: string, text: string, ts: number,
 *   cid?: string, reply_to?: number, mentions?: string[], mention_all?: boolean,
 *   edited_at?: number, deleted?: boolean, attachments?: Attachment[]
 * }} Message
 *
 * @typedef {'small' | 'medium' | 'poster'} ThumbnailSize
 *
 * @typedef {{ size: ThumbnailSize, type: string, width: number, height: number }} Thumbnail
 *
 * A finished upload as a message carries it (`GET /v1/uploads/{id}/content` downloads it).
 * @typedef {{
 *   id: string, name: string, type: string, size: number, sha256: string,
 *   width?: number, height?: number, blurhash?: string, thumbnails?: Thumbnail[]
 * }} Attachment
 *
 * @typedef {{
 *   id: string, owner: string, name: string, state: 'receiving' | 'ready',
 *   length: number, offset: number, created_at: number, attachment?: Attachment
 * }} UploadView
 *
 * @typedef {{ used_bytes: number, quota_bytes: number, max_upload_bytes: number }} UploadUsage
 *
 * @typedef {{ id: string, kind: 'direct' | 'group', name?: string, created_at: number }} ConversationInfo
 *
 * @typedef {ConversationInfo & {
 *   peer?: User, member_count: number, last_message?: Message,
 *   last_seq: number, read_seq: number, unread: number
 * }} ConversationSummary
 *
 * @typedef {{ user: User, role: Role, read_seq?: number, delivered_seq?: number }} Member
 *
 * @typedef {ConversationInfo & { members: Member[], last_seq: number }} ConversationDetail
 *
 * @typedef {'available' | 'away' | 'do_not_disturb'} Availability
 *
 * @typedef {{ user: string, online: boolean, status?: Availability, text?: string, last_seen?: number }} Presence
 *
 * @typedef {{ message: Message, snippet: string, highlights?: [number, number][] }} SearchResult
 *
 * @typedef {{ messages: Message[], has_more: boolean }} History
 *
 * @typedef {{ code: string, message: string, retry_after_ms?: number }} ErrorBody
 *
 * A mention of the user (or `@all`) or a reply to them, in the in-app feed. Ids grow with time.
 * @typedef {{
 *   id: string, kind: 'mention' | 'reply', conv: string, seq: number, message: string,
 *   sender: string, preview: string, ts: number, read: boolean
 * }} NotificationView
 *
 * @typedef {{ notifications: NotificationView[], unread: number, next_before?: string }} NotificationPage
 *
 * The notifications a call turned from unread to read, and the unread count after it.
 * @typedef {{ ids: string[], unread: number }} NotificationsRead
 *
 * `until`: when the mute ends (ms); absent: until turned back on.
 * @typedef {{ muted: boolean, until?: number, mute_mentions: boolean }} ConversationNotifications
 *
 * @typedef {{ do_not_disturb: boolean, until?: number }} NotificationPreferences
 *
 * @typedef {{ id: string, kind: 'web_push' | 'fcm' | 'apns' | 'webhook', address: string, created_at: number }} PushTarget
 *
 * @typedef {{ type: 'message', pos: string } & Message} MessageFrame
 * @typedef {{ type: 'member', pos: string, conv: string, user: string, change: 'added' | 'removed' | 'left' | 'role', by: string, ts: number, role?: Role, conversation: ConversationInfo }} MemberFrame
 * @typedef {{ type: 'read', pos?: string, conv: string, user: string, seq: number }} ReadFrame
 * @typedef {{ type: 'delivered', pos?: string, conv: string, user: string, seq: number }} DeliveredFrame
 * @typedef {{ type: 'synced', pos: string }} SyncedFrame
 * @typedef {{ type: 'ack', cid: string, conv: string, id: string, seq: number, pos: string, ts: number, duplicate?: boolean }} AckFrame
 * @typedef {{ type: 'error', code: string, message: string, cid?: string, retry_after_ms?: number }} ErrorFrame
 * @typedef {{ type: 'presence' } & Presence} PresenceFrame
 * @typedef {{ type: 'typing', conv: string, user: string, typing: boolean, expires_in_ms?: number }} TypingFrame
 * @typedef {{ type: 'edited', pos?: string, conv: string, seq: number, id: string, text: string, edited_at: number, by: string }} EditedFrame
 * @typedef {{ type: 'deleted', pos?: string, conv: string, seq: number, id: string, by: string, ts: number }} DeletedFrame
 *
 * @typedef {{ type: 'notification' } & NotificationView} NotificationFrame
 * @typedef {{ type: 'notifications_read' } & NotificationsRead} NotificationsReadFrame
 *
 * @typedef {MessageFrame | MemberFrame | ReadFrame | DeliveredFrame | SyncedFrame | AckFrame | ErrorFrame
 *   | PresenceFrame | TypingFrame | EditedFrame | DeletedFrame | NotificationFrame | NotificationsReadFrame} ServerFrame
 *
 * @typedef {'pending' | 'failed'} PendingState
 *
 * @typedef {{
 *   cid: string, conv: string, text: string, ts: number, state: PendingState,
 *   reply_to?: number, mentions?: string[], mention_all?: boolean, attachments?: Attachment[],
 *   error?: string, kind: 'send' | 'edit' | 'delete', seq?: number
 * }} Outgoing
 */

export {};
