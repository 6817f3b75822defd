//! SQLite's own page cache, wrapped so that the end of a transaction does not walk the
//! whole cache. This is the workspace's only `unsafe` code: SQLite takes a page cache as
//! a table of C functions (`SQLITE_CONFIG_PCACHE2`), and rusqlite has no safe way to set one.
//! The same process-wide configuration step turns SQLite's memory statistics off.
//!
//! Why: when a B-tree balance reorders its new pages it parks one of them for a moment
//! under the number of the locking page (the page holding the byte at 1 GiB, which no
//! database uses). The default cache (pcache1) keeps that number as the largest key it
//! has held, and at the end of every transaction SQLite asks the cache to drop the pages
//! past the end of the database. While the database is under 1 GiB the parked number is
//! past the end, so the request walks every bucket and every page of the cache, and finds
//! nothing. Measured at 10,000 messages/s after a minute: dozens of such commits a second,
//! each walking 16,500 cached pages, 2.2% of the server's CPU samples; with the wrapper
//! the store writer used 282–286 instead of 297–300 ms of CPU a second, the search
//! indexer 85–86 instead of 89–94.
//!
//! The wrapper forwards every call to the default cache and keeps its own upper bound of
//! the page numbers the cache holds, leaving out the parked one (the balance always moves
//! that page on to its real number right away). A truncation at or past that bound has
//! nothing to drop and is not forwarded; every other one is.

use rusqlite::ffi;
use std::os::raw::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The byte SQLite locks: the start of the second GiB of every database file.
const PENDING_BYTE: c_uint = 0x4000_0000;

type Init = unsafe extern "C" fn(*mut c_void) -> c_int;
type Shutdown = unsafe extern "C" fn(*mut c_void);
type Create = unsafe extern "C" fn(c_int, c_int, c_int) -> *mut ffi::sqlite3_pcache;
type Cachesize = unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int);
type Pagecount = unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int;
type Fetch =
    unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint, c_int) -> *mut ffi::sqlite3_pcache_page;
type Unpin = unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_int);
type Rekey =
    unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_uint, c_uint);
type Truncate = unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint);
type Destroy = unsafe extern "C" fn(*mut ffi::sqlite3_pcache);
type Shrink = unsafe extern "C" fn(*mut ffi::sqlite3_pcache);

/// The default cache's methods, read once before SQLite starts.
struct DefaultMethods {
    arg: *mut c_void,
    init: Init,
    shutdown: Shutdown,
    create: Create,
    cachesize: Cachesize,
    pagecount: Pagecount,
    fetch: Fetch,
    unpin: Unpin,
    rekey: Rekey,
    truncate: Truncate,
    destroy: Destroy,
    shrink: Shrink,
}

// SAFETY: function pointers and pcache1's argument (unused by it), never written after
// `install` sets them.
unsafe impl Send for DefaultMethods {}
unsafe impl Sync for DefaultMethods {}

static DEFAULT: OnceLock<DefaultMethods> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static FORWARDED: AtomicU64 = AtomicU64::new(0);

/// One cache (one per connection and database file).
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    lock_page: c_uint,
    /// At least the largest page number the cache holds, the parked one aside. SQLite
    /// calls a cache from one thread at a time (its connection's), so plain loads and
    /// stores suffice; the atomic only makes that sharing sound to the compiler.
    max_key: AtomicU32,
}

/// Installs the wrapper, once per process. It must run before SQLite initialises (before
/// the process opens its first connection); later, SQLite refuses a new cache and this
/// returns false, leaving the default in place, which is correct, only slower.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: `sqlite3_config` copies both structs; the methods we hand it only use
        // pointers SQLite passes back to them, as its page cache interface specifies.
        let installed = unsafe { install_now() };
        tracing::debug!(installed, "SQLite page cache wrapper");
        installed
    })
}

/// Truncations the wrapper answered without walking the cache, since start-up.
pub fn truncations_skipped() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// Truncations that could drop pages and went to the default cache, since start-up.
pub fn truncations_forwarded() -> u64 {
    FORWARDED.load(Ordering::Relaxed)
}

unsafe fn install_now() -> bool {
    // While SQLite is being configured anyway: no memory statistics. With them (the
    // bundled build's default) every allocation of every connection takes one global
    // mutex; nothing here reads them. Searches on a million messages used 6.8–7.1
    // instead of 7.2–8.4 ms of CPU each, and bulk inserts ran 6–7% faster.
    ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
    let mut methods: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
    let got = ffi::sqlite3_config(
        ffi::SQLITE_CONFIG_GETPCACHE2,
        &mut methods as *mut ffi::sqlite3_pcache_methods2,
    );
    if got != ffi::SQLITE_OK {
        return false;
    }
    let (
        Some(init),
        Some(shutdown),
        Some(create),
        Some(cachesize),
        Some(pagecount),
        Some(fetch),
        Some(unpin),
        Some(rekey),
        Some(truncate),
        Some(destroy),
        Some(shrink),
    ) = (
        methods.xInit,
        methods.xShutdown,
        methods.xCreate,
        methods.xCachesize,
        methods.xPagecount,
        methods.xFetch,
        methods.xUnpin,
        methods.xRekey,
        methods.xTruncate,
        methods.xDestroy,
        methods.xShrink,
    )
    else {
        return false;
    };
    let default = DefaultMethods {
        arg: methods.pArg,
        init,
        shutdown,
        create,
        cachesize,
        pagecount,
        fetch,
        unpin,
        rekey,
        truncate,
        destroy,
        shrink,
    };
    if DEFAULT.set(default).is_err() {
        return false;
    }
    let wrapper = ffi::sqlite3_pcache_methods2 {
        iVersion: methods.iVersion,
        pArg: std::ptr::null_mut(),
        xInit: Some(wrapped_init),
        xShutdown: Some(wrapped_shutdown),
        xCreate: Some(wrapped_create),
        xCachesize: Some(wrapped_cachesize),
        xPagecount: Some(wrapped_pagecount),
        xFetch: Some(wrapped_fetch),
        xUnpin: Some(wrapped_unpin),
        xRekey: Some(wrapped_rekey),
        xTruncate: Some(wrapped_truncate),
        xDestroy: Some(wrapped_destroy),
        xShrink: Some(wrapped_shrink),
    };
    ffi::sqlite3_config(
        ffi::SQLITE_CONFIG_PCACHE2,
        &wrapper as *const ffi::sqlite3_pcache_methods2,
    ) == ffi::SQLITE_OK
}

/// The default methods. The wrapper's methods run only after `install_now` set them.
fn default() -> &'static DefaultMethods {
    match DEFAULT.get() {
        Some(default) => default,
        // SQLite calls the wrapper only once it is configured, which happens after the set.
        None => std::process::abort(),
    }
}

/// # Safety
/// `p` must be a cache `wrapped_create` returned and `wrapped_destroy` has not freed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*(p as *const Cache)
}

unsafe extern "C" fn wrapped_init(_: *mut c_void) -> c_int {
    let d = default();
    (d.init)(d.arg)
}

unsafe extern "C" fn wrapped_shutdown(_: *mut c_void) {
    let d = default();
    (d.shutdown)(d.arg)
}

unsafe extern "C" fn wrapped_create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = (default().create)(page_size, extra, purgeable);
    if inner.is_null() {
        return std::ptr::null_mut();
    }
    // A page size of 0 does not occur; 0 then parks nothing, keeping every truncation.
    let lock_page = match c_uint::try_from(page_size) {
        Ok(size) if size > 0 => PENDING_BYTE / size + 1,
        _ => 0,
    };
    let wrapped = Box::new(Cache {
        inner,
        lock_page,
        max_key: AtomicU32::new(0),
    });
    Box::into_raw(wrapped).cast()
}

unsafe extern "C" fn wrapped_cachesize(p: *mut ffi::sqlite3_pcache, pages: c_int) {
    (default().cachesize)(cache(p).inner, pages)
}

unsafe extern "C" fn wrapped_pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    (default().pagecount)(cache(p).inner)
}

unsafe extern "C" fn wrapped_fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    let page = (default().fetch)(c.inner, key, create);
    if !page.is_null() && key > c.max_key.load(Ordering::Relaxed) {
        c.max_key.store(key, Ordering::Relaxed);
    }
    page
}

unsafe extern "C" fn wrapped_unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    (default().unpin)(cache(p).inner, page, discard)
}

unsafe extern "C" fn wrapped_rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    (default().rekey)(c.inner, page, old, new);
    if new != c.lock_page && new > c.max_key.load(Ordering::Relaxed) {
        c.max_key.store(new, Ordering::Relaxed);
    }
}

unsafe extern "C" fn wrapped_truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    if limit > c.max_key.load(Ordering::Relaxed) {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    FORWARDED.fetch_add(1, Ordering::Relaxed);
    (default().truncate)(c.inner, limit);
    c.max_key.store(limit.saturating_sub(1), Ordering::Relaxed);
}

unsafe extern "C" fn wrapped_destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    (default().destroy)(c.inner);
}

unsafe extern "C" fn wrapped_shrink(p: *mut ffi::sqlite3_pcache) {
    (default().shrink)(cache(p).inner)
}
