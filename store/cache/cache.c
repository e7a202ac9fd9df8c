/* The bounded SQLite block cache (see cache.h and DESIGN.md "Cache keys").
 *
 * One database, <dir>/cache.db, with a rollback journal (TRUNCATE) and
 * 64 KiB pages, and a slot file, <dir>/blocks.dat (slots.h):
 *
 *   blocks(id INTEGER PRIMARY KEY, data BLOB)      bytes of blocks not SLOT_SIZE long
 *   idx(key PRIMARY KEY, id, len, atime, slot)      key -> row or slot, length, LRU clock
 *   idx_atime ON idx(atime)                         eviction order
 *   idx_slot ON idx(slot)                           which block a slot holds (slots_shrink)
 *   slots_free(slot PRIMARY KEY, freed)             free slots, and when they were freed
 *   meta(name PRIMARY KEY, data)                    small named blobs
 *   pins(key, owner) PRIMARY KEY                    keys eviction skips (cache_pins_set)
 *   state(k = 0, bytes, clock, nslots)              exact byte count, LRU clock, file slots
 *
 * Slots: a block of exactly SLOT_SIZE (1 MiB, what labctl writes) goes to
 * a slot of blocks.dat, written around the page cache (O_DIRECT): through
 * SQLite, a cold GiB cost the writer 0.8-1.3 CPU s and the kernel's
 * writeback 0.5 more; into slots, 0.4-0.5 in all (tests/bench/README.md).
 * Shorter blocks (an image's tail, other tools' block sizes) stay rows of
 * `blocks`.  For a slot row, idx.id is minus the clock at its insert: a
 * slot is reused, so the checked set (below) needs an id no other row had.
 * SQLite stays the one source of truth: a slot belongs to a block only
 * through a committed idx row, and the rules that keep that so are
 *   - the slot's bytes are written, and synced (fdatasync), before the
 *     COMMIT of the row that names it: a crash leaves a slot written but
 *     free, never a row naming bytes that are not there;
 *   - a slot freed by a transaction (eviction, drop) is reused only by a
 *     later one (slots_free.freed is that transaction's clock + 1): until
 *     it commits, a reader of this or another process may still be reading
 *     the block under its old row.  Readers hold their lookup statement, and
 *     so SQLite's SHARED lock, across the pread, and COMMIT waits for them;
 *   - the file is cut only past slots freed by an earlier transaction.
 * Free slots are kept for the next batch (keep_free_slots); beyond those,
 * slots_shrink moves blocks down from the end of the file into free slots
 * and cuts the file, so that a lower limit gives its room back.
 *
 * The LRU bookkeeping lives in idx, never in a blob row: a hit only records
 * the key in memory (a set: a key read again before it is written costs a
 * probe), and the writer applies the set in the next transaction it commits
 * anyway (a batch of inserts, deletes, an eviction, a flush, the close), or
 * on its own once the oldest recorded hit is TOUCH_INTERVAL_S old or the set
 * is full.  So a warm read of cached blocks commits nothing for up to a
 * minute: a commit takes the EXCLUSIVE lock for its fsyncs
 * (synchronous=FULL), during which no reader gets a block, and it resets
 * every reader's page cache (tests/bench/cold.sh, 4 KiB random reads).  The
 * order is still LRU where it matters: every eviction runs in a transaction
 * that applies all the hits recorded before it, so this process never
 * evicts a block it read since its last commit; only the order among the
 * hits of one interval is coarse (first hit first), and other processes
 * sharing the directory, or the next mount after a crash, see hits up to
 * TOUCH_INTERVAL_S late: which of the blocks read within one minute goes
 * first does not matter for a cache of thousands of blocks.
 *
 * Writes: cache_put() copies the block into a bounded in-memory queue; one
 * writer thread takes everything queued (up to a batch cap) and stores it in
 * one transaction, evicting least-recently-used rows first so that freed
 * pages and slots are reused and the files stay near the limit.  A cache of 32
 * batches or more (128 MiB at the default batch) also evicts a batch ahead
 * at the end of each transaction, so that the next one finds pages that
 * were free before it began: SQLite journals the old content of a page it
 * frees and reuses in one transaction (evict_ahead).  `bytes` and the clock
 * are read and written inside that transaction, so they stay exact (also
 * with several processes sharing the directory).  A block row and its idx row
 * commit together or not at all, so a crash or power cut can lose recent
 * inserts but never expose a partial block.
 *
 * Why not WAL: it writes every byte twice (the WAL, then the checkpoint).  A
 * rollback journal holds only the old content of pages a transaction
 * changes that existed before it, and SQLite journals neither pages appended
 * to the file nor pages that were free when the transaction began: so the
 * block bytes are written once,
 * and the journal takes the index pages (tests/bench/cold.sh: 2.15 -> 1.28
 * bytes written per byte cached, imgfs 3.5 -> 2.5-2.8 CPU s per cold GiB).
 * synchronous=FULL: the journal is on disk before the file is changed, so a
 * power cut mid-commit is rolled back at the next open.  The writer's page
 * cache does not spill (cache_spill=OFF): the batch waits in memory until
 * COMMIT, so readers are locked out only while the commit writes, not for
 * the whole batch.
 *
 * Disk: everything in the directory stays within the limit + 8 MiB
 * (DISK_SLACK).  The limit bounds the block bytes (cache_bytes); the disk is
 * bounded by what the files are made of:
 *   cache.db + blocks.dat   pages and slots in use (blocks with their page
 *                 overhead, the index, the listing and records in meta:
 *                 all counted) <= target, evicted by that measure too,
 *                 plus at most keep_free_bytes of free pages (KEEP_FREE_BYTES, and
 *                 the pages of a batch evicted ahead; incremental vacuum
 *                 gives back the rest) and keep_free_slots free slots
 *   cache.db-journal  empty between transactions; during one, the old
 *                 content of the index pages it changes (and of pages that
 *                 incremental vacuum moves): bounded by `journal`
 * target = limit + DISK_SLACK - (journal + a transaction + free pages + 1 MiB):
 * large caches give up a few MiB of blocks for it; small ones, where the
 * pages of the index and the listing weigh most, may keep pages beyond the
 * limit, never block bytes.  (A block of a row takes some pages more than its
 * bytes.)
 *
 * Reads: a small pool of read-only connections, one per concurrent reader.
 * The key lookup statement stays active while the blob or slot is read, so
 * both happen under one shared lock (an evicted row id or slot reused by a
 * later insert can never be read under the old key).  A blob is read with
 * sqlite3_blob_read() straight into the caller's buffer: SQLite reads
 * overflow pages directly into it, bypassing its page cache; a slot with
 * pread(), through the page cache (a warm read is a copy of cached pages).
 *
 * Checks (CACHE_CHECK): the rows this process has seen hash to their key sit
 * in an in-memory set, key -> row id.  A row gets there when it is first read
 * whole and hashes right, or when the writer commits it from bytes its caller
 * had checked; rows the writer deletes leave it, and a row under the same key
 * with another id (replaced, by us or another process) is not in it.  So each
 * row is hashed about once per process, not on every hit: a warm re-read and
 * 4 KiB random reads cost what they did, and a block altered on disk while no
 * imgfs had it checked (between mounts, or before the first read) is never
 * served.  What the set cannot see is a row or slot rewritten in place under
 * the same id after it was checked. */
#include "store/cache/cache.h"

#include "common/hash.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache_internal.h"
#include "store/cache/journal_vfs.h"
#include "store/cache/slots.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_APP_ID         0x696d6763 /* "imgc" */
#define CACHE_SCHEMA_VERSION 3 /* 1: without pins, 2: without slots (both upgraded on open) */
/* Pages of a new cache.  Blocks of 1 MiB live in the slot file, so the
 * database holds the index and few blobs: with 64 KiB pages (the size
 * before the slot file) every commit journalled and wrote about 0.17 bytes
 * of index pages per byte cached; with 4 KiB, 0.02 (tests/bench/cold.sh).
 * A cache made with larger pages is rewritten at open when that is cheap
 * (small_pages); otherwise it keeps them (c->page_size). */
#define CACHE_PAGE_SIZE 4096
#define CACHE_PAGE_MAX  65536 /* the largest pages a cache of ours has */
#define CACHE_JOURNAL   "TRUNCATE"

/* Blocks waiting for the writer (references to the reader's buffers, so
 * they count against its memory budget).  When the writer falls behind, a
 * block past this is not cached and a warm re-read fetches it again.  With
 * a WAL, 16 MiB dropped 8% of a cold 1 GiB read on a 2-core host.  With the
 * rollback journal and the slot file, 16 MiB still dropped 4-28 blocks of
 * 1024 per cold read, and 22 MiB 0-2, at the same cold rate (340-380 MB/s)
 * and 1 MiB more peak RSS (BENCH_RUNTIME=2 tests/bench/cold.sh 1024 1, four
 * runs each, alternating; mount.sh: 0 dropped against 19).  It leaves the
 * reader 2 MiB of its 24: a writer that falls behind now slows the reads
 * that wait for memory instead of losing their blocks. */
#define QUEUE_MAX_BYTES  (22u << 20)
#define BATCH_MAX_BLOCKS 256
#define BATCH_MAX_BYTES  (4u << 20)
#define DISK_SLACK       (8ull << 20) /* the contract: --cache-size + 8 MiB */
#define KEEP_FREE_BYTES  (1u << 20)   /* free pages kept for the next batch */
#define TX_MAX_BLOCK     (4ull << 20) /* a batch is one block when larger (RECORD_MAX_BLOCK_SIZE) */
#define TX_INDEX_BYTES   (1ull << 20) /* index pages a batch dirties besides the blocks */
#define TOUCH_MAX        8192         /* distinct keys hit between two commits */
#define TOUCH_SLOTS      (2 * TOUCH_MAX) /* their hash index: at most half full */
#define TOUCH_INTERVAL_S 60.0            /* hits wait at most this long for a commit (top) */
#define DELETE_MAX       256
#define POOL_MAX         8 /* read connections: the reader's 6 slots and a few lookups */
#define BUSY_TIMEOUT_MS  5000
#define FULL_BACKOFF_S   30.0
#define ERROR_BACKOFF_S  2.0
/* Blocks a transaction moves down the slot file to shorten it (see
 * slots_shrink): a lower limit than last time is given back over a few
 * transactions, none of them long. */
#define RELOCATE_MAX 4
/* Slots beyond this are not believed (2^40 MiB: no file gets there). */
#define SLOTS_MAX     (1ll << 40)
#define SLOTS_MAX_SQL "1099511627776"

/* A cache of at least this many batches evicts a batch ahead (evict_ahead
 * in struct cache). */
#define AHEAD_MIN_BATCHES 32

/* Page cache per connection.  The writer's is small on purpose (with
 * 32 MiB, WAL inserts ran at 130 MB/s instead of 350, tests/bench/README.md):
 * it holds a batch only until its COMMIT (no spill, see the top), then
 * gives it back (sqlite3_db_release_memory: SQLite itself kept 7.9 MiB).
 * Readers keep the pages that small reads pull in: the index, interior and
 * pointer-map pages a 4 KiB read walks.  4 KiB random reads ran at 17k IOPS
 * with 4 MiB, 11k with 256 KiB (3 pages); 512 KiB (7 pages) ran as fast as
 * 1 MiB side by side, with half the memory times POOL_MAX
 * (tests/bench/cold.sh, tests/bench/README.md). */
#define WRITER_CACHE_KIB 512
#define READER_CACHE_KIB 512
/* The set of checked rows: 40 bytes a slot, at most half full.  The largest
 * (10 MiB) holds 128k rows, 128 GiB of 1 MiB blocks; when it is full it
 * starts over, which only means hashing rows again. */
#define CHECKED_MIN_SLOTS 1024u
#define CHECKED_MAX_SLOTS (1u << 18)

/* ---- types ---- */

struct qent {
	struct qent *next;
	unsigned char key[CACHE_KEY_LEN];
	size_t len;
	sqlite3_int64 id;          /* the row it went into; 0 until then */
	const unsigned char *data; /* own[] or the caller's buffer */
	void (*release)(void *);   /* the caller's buffer: called once written */
	void *arg;
	unsigned char own[];
};

static void qent_free(struct qent *q)
{
	if (q->release)
		q->release(q->arg);
	free(q);
}

/* A synchronous cache_meta_put(), handed to the writer thread so that one
 * connection does all the writing (no lock contention inside a process). */
struct meta_req {
	struct meta_req *next;
	const char *name;
	const void *data;
	size_t len;
	int pins; /* cache_pins_set: name is the owner, data len keys */
	int rc, done;
	char msg[256];
};

struct checked {
	unsigned char key[CACHE_KEY_LEN];
	sqlite3_int64 id; /* the row's (< 0 for a row in a slot); 0: a free entry */
};

struct rconn {
	struct rconn *next;
	sqlite3 *db;
	sqlite3_stmt *lookup, *meta_get;
};

struct wstmts {
	sqlite3_stmt *begin, *commit, *rollback, *state_get, *state_set, *find, *touch, *oldest,
	        *del_block, *del_idx, *ins_block, *ins_idx, *freelist, *page_count, *page_size,
	        *sum, *meta_put, *pins_any, *pins_del, *pins_ins, *free_add, *free_take, *free_del,
	        *free_get, *free_count, *at_slot, *relocate;
};

struct cache {
	char *dir, *path, *marker, *slots_path;
	uint64_t limit;
	uint64_t batch_bytes; /* per transaction */
	uint64_t target;      /* bytes of database pages in use (see the top) */
	uint64_t journal;     /* bound on the rollback journal (journal_size_limit) */
	/* Bytes a transaction evicts beyond its own needs, for the next one.
	 * SQLite journals the old content of a page that a transaction frees
	 * and then reuses (a rollback must bring the deleted row back), but not
	 * of a page that was already free when it began.  A full cache that
	 * evicted only as much as each insert needed wrote every block twice,
	 * once to the journal (tests/bench/cold.sh with BENCH_FULL_CACHE=1:
	 * 2.4 bytes written per byte cached, against 1.25 while the cache
	 * grows).  Evicting a batch ahead leaves the next batch free pages from
	 * an earlier transaction.  0 for small caches, where a batch is a large
	 * share of the limit. */
	uint64_t evict_ahead;
	unsigned page_size;       /* of the database (PRAGMA page_size) */
	uint64_t keep_free_bytes; /* free pages maybe_vacuum leaves for the next batch */
	uint64_t keep_free_slots; /* free slots slots_shrink leaves for the next batch */

	/* blocks.dat: read by every reader, written by the writer thread */
	struct slots slots;

	/* writer connection: used by cache_open, then only by the writer thread */
	sqlite3 *wdb;
	struct wstmts w;

	/* queue, hits, deletes, flush handshake: all under mu */
	pthread_mutex_t mu;
	pthread_cond_t wake; /* writer: there is work */
	pthread_cond_t done; /* flushers: progress */
	struct qent *qhead, *qtail;
	size_t qbytes; /* queued + reserved */
	uint64_t put_seq, done_seq;
	unsigned char (*touch)[CACHE_KEY_LEN], (*touch_spare)[CACHE_KEY_LEN];
	size_t ntouch;
	uint16_t *touch_slot; /* hash index into touch[]: 1 + position, 0 free */
	double touch_since;   /* time_mono() of the first hit in touch[] */
	double touch_interval;
	uint64_t touch_seq, touch_done;
	uint64_t commits; /* writer transactions (cache_test_commits) */
	unsigned char (*del)[CACHE_KEY_LEN];
	size_t ndel;
	uint64_t flush_gen, flush_done, flush_put_target, flush_touch_target;
	int stop;
	int need_evict; /* opened over the limit: evict without waiting for a put */
	double degraded_until;
	double next_err_log; /* rate limit of write-error warnings */
	double full_backoff;
	unsigned test_max_pages, applied_max_pages;
	uint64_t bytes; /* as of the last commit */
	pthread_t writer;
	int writer_started;

	/* read connection pool */
	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	struct rconn *pool;
	int nconns;

	/* meta writes, done by the writer thread (under mu) */
	struct meta_req *meta_head;

	/* rows checked against their key: open addressing, linear probing */
	pthread_mutex_t chk_mu;
	struct checked *chk;
	size_t chk_cap, chk_n;

	atomic_uint_fast64_t hits, misses, inserts, evictions, dropped, verify_failures;
	atomic_int corrupt;
	atomic_int full_logged;
};

/* ---- small helpers ---- */

static char *path_join(const char *dir, const char *name)
{
	size_t ld = strlen(dir), ln = strlen(name);
	char *p = malloc(ld + ln + 2);
	if (!p)
		return NULL;
	memcpy(p, dir, ld);
	p[ld] = '/';
	memcpy(p + ld + 1, name, ln + 1);
	return p;
}

static int mkdir_p(const char *dir, struct err *e)
{
	char *p = strdup(dir);
	struct stat st;
	int rc = -1;
	if (!p)
		return err_set(e, ERR_IO, "out of memory");
	for (char *s = p + 1;; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char saved = *s;
		*s = '\0';
		if (mkdir(p, 0700) && errno != EEXIST) {
			err_errno(e, "creating cache directory %s", p);
			goto out;
		}
		*s = saved;
		if (!saved)
			break;
	}
	if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
		err_set(e, ERR_IO, "cache directory %s is not a directory", dir);
		goto out;
	}
	rc = 0;
out:
	free(p);
	return rc;
}

static int is_corruption(int rc)
{
	rc &= 0xff;
	return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

static int is_disk_full(int rc)
{
	/* A full disk shows up as SQLITE_FULL, or as a write error (EFBIG,
	 * quota, ENOSPC while extending the file or its journal). */
	return (rc & 0xff) == SQLITE_FULL || rc == SQLITE_IOERR_WRITE ||
	       rc == SQLITE_IOERR_TRUNCATE || rc == SQLITE_IOERR_FSYNC;
}

static int db_err(struct err *e, sqlite3 *db, int rc, const char *what)
{
	return err_set(e, ERR_IO, "block cache: %s: %s (SQLite %d)", what,
	               db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc);
}

/* ---- the set of checked rows ---- */

static size_t chk_home(const struct cache *c, const unsigned char *key)
{
	uint64_t h;
	memcpy(&h, key, sizeof(h)); /* keys are hashes: any 8 bytes are uniform */
	return (size_t)(h & (c->chk_cap - 1));
}

/* The slot holding key, or the free slot where it would go (chk_mu held). */
static size_t chk_slot(const struct cache *c, const unsigned char *key)
{
	size_t i = chk_home(c, key);
	while (c->chk[i].id && memcmp(c->chk[i].key, key, CACHE_KEY_LEN))
		i = (i + 1) & (c->chk_cap - 1);
	return i;
}

static int checked_has(struct cache *c, const unsigned char *key, sqlite3_int64 id)
{
	int yes = 0;
	pthread_mutex_lock(&c->chk_mu);
	if (c->chk && id != 0)
		yes = c->chk[chk_slot(c, key)].id == id;
	pthread_mutex_unlock(&c->chk_mu);
	return yes;
}

/* Room for one more (chk_mu held): grow, or start over at the largest size
 * (or when memory is short). */
static void chk_reserve(struct cache *c)
{
	struct checked *old = c->chk, *nv;
	size_t ocap = c->chk_cap, ncap;
	if (old && c->chk_n + 1 <= c->chk_cap / 2)
		return;
	ncap = old ? 2 * ocap : CHECKED_MIN_SLOTS;
	if (ncap > CHECKED_MAX_SLOTS || !(nv = calloc(ncap, sizeof(*nv)))) {
		if (old)
			memset(old, 0, ocap * sizeof(*old));
		c->chk_n = 0;
		return;
	}
	c->chk = nv;
	c->chk_cap = ncap;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].id)
			c->chk[chk_slot(c, old[i].key)] = old[i];
	free(old);
}

static void checked_add(struct cache *c, const unsigned char *key, sqlite3_int64 id)
{
	size_t i;
	if (id == 0)
		return;
	pthread_mutex_lock(&c->chk_mu);
	chk_reserve(c);
	if (c->chk) {
		i = chk_slot(c, key);
		if (!c->chk[i].id)
			c->chk_n++;
		memcpy(c->chk[i].key, key, CACHE_KEY_LEN);
		c->chk[i].id = id;
	}
	pthread_mutex_unlock(&c->chk_mu);
}

static void checked_del(struct cache *c, const unsigned char *key)
{
	size_t i, j, h, mask;
	pthread_mutex_lock(&c->chk_mu);
	if (!c->chk || !c->chk[i = chk_slot(c, key)].id) {
		pthread_mutex_unlock(&c->chk_mu);
		return;
	}
	/* backward shift: move later entries of the probe chain into the hole
	 * when their home slot allows, so that no chain is cut */
	mask = c->chk_cap - 1;
	c->chk[i].id = 0;
	c->chk_n--;
	for (j = (i + 1) & mask; c->chk[j].id; j = (j + 1) & mask) {
		h = chk_home(c, c->chk[j].key);
		if (i <= j ? h <= i || h > j : h <= i && h > j) {
			c->chk[i] = c->chk[j];
			c->chk[j].id = 0;
			i = j;
		}
	}
	pthread_mutex_unlock(&c->chk_mu);
}

/* Remember that the file is damaged: the next cache_open() moves it aside
 * (moving it now would pull it from under other connections). */
static void mark_corrupt(struct cache *c, int rc)
{
	int fd;
	if (atomic_exchange(&c->corrupt, 1))
		return;
	log_warn("block cache %s is damaged (SQLite %d): caching is off until the next start, "
	         "which starts a fresh cache",
	         c->path, rc);
	fd = open(c->marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
}

static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int exec(sqlite3 *db, const char *sql)
{
	return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* A PRAGMA that returns one integer; -1 on error (rc in *rcp when given). */
static long long pragma_int(sqlite3 *db, const char *sql, int *rcp)
{
	sqlite3_stmt *st = NULL;
	long long v = -1;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			v = sqlite3_column_int64(st, 0);
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			rc = SQLITE_OK;
			v = 0;
		}
	}
	sqlite3_finalize(st);
	if (rcp)
		*rcp = rc;
	return v;
}

static int open_conn(const char *path, int cache_kib, sqlite3 **out)
{
	sqlite3 *db = NULL;
	char sql[128];
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                         journal_vfs_name());
	if (rc == SQLITE_OK) {
		sqlite3_extended_result_codes(db, 1);
		sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
		/* mmap: DESIGN.md measured it at ~200 MB/s against 2.9-7.5 GB/s. */
		snprintf(sql, sizeof(sql),
		         "PRAGMA mmap_size=0; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-%d;",
		         cache_kib);
		rc = exec(db, sql);
	}
	if (rc != SQLITE_OK) {
		sqlite3_close(db);
		db = NULL;
	}
	*out = db;
	return rc;
}

/* ---- open: schema, corruption, move aside ---- */

static const char schema_sql[] =
        "CREATE TABLE blocks(id INTEGER PRIMARY KEY, data BLOB NOT NULL);"
        "CREATE TABLE idx(key BLOB PRIMARY KEY, id INTEGER NOT NULL, len INTEGER NOT NULL,"
        " atime INTEGER NOT NULL, slot INTEGER) WITHOUT ROWID;"
        "CREATE INDEX idx_atime ON idx(atime);"
        "CREATE INDEX idx_slot ON idx(slot) WHERE slot IS NOT NULL;"
        "CREATE TABLE slots_free(slot INTEGER PRIMARY KEY, freed INTEGER NOT NULL);"
        "CREATE TABLE meta(name TEXT PRIMARY KEY, data BLOB NOT NULL);"
        "CREATE TABLE pins(key BLOB NOT NULL, owner TEXT NOT NULL, PRIMARY KEY(key, owner))"
        " WITHOUT ROWID;"
        "CREATE TABLE state(k INTEGER PRIMARY KEY CHECK (k = 0), bytes INTEGER NOT NULL,"
        " clock INTEGER NOT NULL, nslots INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO state VALUES(0, 0, 0, 0);";

/* Create the schema in a database that has none. */
static int init_schema(sqlite3 *db)
{
	char sql[128];
	int rc;
	/* Both only take effect before the first table exists. */
	snprintf(sql, sizeof(sql), "PRAGMA page_size=%d; PRAGMA auto_vacuum=INCREMENTAL;",
	         CACHE_PAGE_SIZE);
	rc = exec(db, sql);
	if (rc != SQLITE_OK)
		return rc;
	rc = exec(db, "PRAGMA journal_mode=" CACHE_JOURNAL ";");
	if (rc != SQLITE_OK)
		return rc;
	rc = exec(db, "BEGIN IMMEDIATE");
	if (rc != SQLITE_OK)
		return rc;
	/* Another process may have created it meanwhile. */
	if (pragma_int(db, "SELECT count(*) FROM sqlite_schema", &rc) == 0 && rc == SQLITE_OK) {
		rc = exec(db, schema_sql);
		if (rc == SQLITE_OK) {
			snprintf(sql, sizeof(sql),
			         "PRAGMA application_id=%d; PRAGMA user_version=%d;", CACHE_APP_ID,
			         CACHE_SCHEMA_VERSION);
			rc = exec(db, sql);
		}
	}
	if (rc == SQLITE_OK)
		rc = exec(db, "COMMIT");
	if (rc != SQLITE_OK)
		exec(db, "ROLLBACK");
	return rc;
}

/* Older schemas keep their blocks: 1 had no pins, 2 no slot file (its
 * blocks stay rows of `blocks`; new ones of SLOT_SIZE go to the slots). */
static int migrate(sqlite3 *db, long long from)
{
	char sql[128];
	int rc = exec(db, "BEGIN IMMEDIATE");
	if (rc != SQLITE_OK)
		return rc;
	if (from < 2)
		rc = exec(db,
		          "CREATE TABLE IF NOT EXISTS pins(key BLOB NOT NULL, owner TEXT NOT NULL, "
		          "PRIMARY KEY(key, owner)) WITHOUT ROWID;");
	if (rc == SQLITE_OK && from < 3 &&
	    pragma_int(db, "SELECT count(*) FROM pragma_table_info('idx') WHERE name = 'slot'",
	               &rc) == 0 &&
	    rc == SQLITE_OK)
		rc = exec(db, "ALTER TABLE idx ADD COLUMN slot INTEGER;"
		              "ALTER TABLE state ADD COLUMN nslots INTEGER NOT NULL DEFAULT 0;");
	if (rc == SQLITE_OK && from < 3)
		rc = exec(db,
		          "CREATE INDEX IF NOT EXISTS idx_slot ON idx(slot) WHERE slot IS NOT "
		          "NULL;"
		          "CREATE TABLE IF NOT EXISTS slots_free(slot INTEGER PRIMARY KEY, freed "
		          "INTEGER NOT NULL);");
	if (rc == SQLITE_OK) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version=%d;", CACHE_SCHEMA_VERSION);
		rc = exec(db, sql);
	}
	if (rc == SQLITE_OK)
		rc = exec(db, "COMMIT");
	if (rc != SQLITE_OK)
		exec(db, "ROLLBACK");
	else
		log_info("block cache: schema %lld upgraded to %d", from, CACHE_SCHEMA_VERSION);
	return rc;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
}

static void finalize_writer(struct cache *c)
{
	sqlite3_stmt **v = (sqlite3_stmt **)&c->w;
	for (size_t i = 0; i < sizeof(c->w) / sizeof(*v); i++) {
		sqlite3_finalize(v[i]);
		v[i] = NULL;
	}
}

static int prepare_writer(struct cache *c)
{
	struct wstmts *w = &c->w;
	sqlite3 *db = c->wdb;
	int rc;
#define P(field, sql)                                                                              \
	do {                                                                                       \
		if ((rc = prepare(db, sql, &w->field)) != SQLITE_OK)                               \
			return rc;                                                                 \
	} while (0)
	P(begin, "BEGIN IMMEDIATE");
	P(commit, "COMMIT");
	P(rollback, "ROLLBACK");
	P(state_get, "SELECT bytes, clock, nslots FROM state WHERE k = 0");
	P(state_set, "UPDATE state SET bytes = ?1, clock = ?2, nslots = ?3 WHERE k = 0");
	P(find, "SELECT id, len, slot FROM idx WHERE key = ?1");
	P(touch, "UPDATE idx SET atime = ?2 WHERE key = ?1");
	/* pinned keys are never evicted: the scan in atime order steps over
	 * them (one primary-key probe each) */
	P(oldest,
	  "SELECT key, id, len, atime, slot FROM idx WHERE NOT EXISTS (SELECT 1 FROM pins WHERE "
	  "pins.key = idx.key) ORDER BY atime LIMIT 1");
	P(del_block, "DELETE FROM blocks WHERE id = ?1");
	P(del_idx, "DELETE FROM idx WHERE key = ?1");
	P(ins_block, "INSERT INTO blocks(data) VALUES(?1)");
	P(ins_idx, "INSERT INTO idx(key, id, len, atime, slot) VALUES(?1, ?2, ?3, ?4, ?5)");
	P(freelist, "PRAGMA freelist_count");
	P(page_count, "PRAGMA page_count");
	P(page_size, "PRAGMA page_size");
	P(sum, "SELECT coalesce(sum(len), 0), coalesce(max(atime), 0) FROM idx");
	P(meta_put, "INSERT OR REPLACE INTO meta(name, data) VALUES(?1, ?2)");
	P(pins_any, "SELECT EXISTS (SELECT 1 FROM pins)");
	P(pins_del, "DELETE FROM pins WHERE owner = ?1");
	P(pins_ins, "INSERT OR IGNORE INTO pins(key, owner) VALUES(?1, ?2)");
	P(free_add, "INSERT INTO slots_free(slot, freed) VALUES(?1, ?2)");
	P(free_take, "SELECT slot FROM slots_free WHERE freed <= ?1 AND slot < ?2 ORDER BY slot "
	             "LIMIT 1");
	P(free_del, "DELETE FROM slots_free WHERE slot = ?1");
	P(free_get, "SELECT freed FROM slots_free WHERE slot = ?1");
	P(free_count, "SELECT count(*) FROM slots_free");
	P(at_slot, "SELECT key, len FROM idx WHERE slot = ?1");
	P(relocate, "UPDATE idx SET slot = ?2, id = ?3 WHERE key = ?1");
#undef P
	return SQLITE_OK;
}

/* The slot bookkeeping agrees with itself: every slot named by one row at
 * most, below nslots, and not free.  The file is not trusted (cache.h): two
 * rows on one slot would let an insert overwrite a block that this process
 * has checked and serves as it is.  Rows that break this go (their blocks
 * are fetched again).  Index scans of idx_slot, once per open.  An SQLite
 * code. */
static int audit_slots(struct cache *c)
{
	/* The repairs are the checks: when they change nothing, the
	 * transaction is rolled back, and a sound cache costs no write. */
	static const char fix[] =
	        "DELETE FROM idx WHERE slot IN (SELECT slot FROM idx WHERE slot IS NOT NULL "
	        "GROUP BY slot HAVING count(*) > 1) OR slot < 0 OR slot >= " SLOTS_MAX_SQL ";"
	        "DELETE FROM slots_free WHERE slot IN (SELECT slot FROM idx WHERE slot IS NOT "
	        "NULL) OR slot < 0 OR slot >= (SELECT nslots FROM state);"
	        "UPDATE state SET nslots = (SELECT max(slot) + 1 FROM idx) WHERE nslots <= "
	        "(SELECT max(slot) FROM idx);";
	int before, rc = exec(c->wdb, "BEGIN IMMEDIATE");
	if (rc != SQLITE_OK)
		return rc;
	before = sqlite3_total_changes(c->wdb);
	rc = exec(c->wdb, fix);
	if (rc == SQLITE_OK && sqlite3_total_changes(c->wdb) != before) {
		log_warn("block cache %s: its slot bookkeeping disagrees with itself (%d rows); "
		         "the blocks concerned are dropped",
		         c->path, sqlite3_total_changes(c->wdb) - before);
		rc = exec(c->wdb, "COMMIT");
	}
	if (rc != SQLITE_OK || sqlite3_get_autocommit(c->wdb) == 0)
		exec(c->wdb, "ROLLBACK");
	return rc;
}

/* Read bytes and clock, cross-checked against idx (one small row per block,
 * so this is cheap even for a large cache).  An SQLite code. */
static int load_state(struct cache *c)
{
	uint64_t bytes = 0, sum = 0, clock = 0, maxatime = 0, nslots = 0;
	int rc = sqlite3_step(c->w.state_get);
	if (rc == SQLITE_ROW) {
		bytes = (uint64_t)sqlite3_column_int64(c->w.state_get, 0);
		clock = (uint64_t)sqlite3_column_int64(c->w.state_get, 1);
		nslots = (uint64_t)sqlite3_column_int64(c->w.state_get, 2);
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		rc = SQLITE_CORRUPT; /* the state row is gone */
	}
	sqlite3_reset(c->w.state_get);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(c->w.sum);
	if (rc == SQLITE_ROW) {
		sum = (uint64_t)sqlite3_column_int64(c->w.sum, 0);
		maxatime = (uint64_t)sqlite3_column_int64(c->w.sum, 1);
		rc = SQLITE_OK;
	}
	sqlite3_reset(c->w.sum);
	if (rc != SQLITE_OK)
		return rc;
	if (sum != bytes || maxatime > clock) {
		log_warn("block cache %s: state said %llu bytes, the index holds %llu; fixed",
		         c->path, (unsigned long long)bytes, (unsigned long long)sum);
		sqlite3_bind_int64(c->w.state_set, 1, (sqlite3_int64)sum);
		sqlite3_bind_int64(c->w.state_set, 2,
		                   (sqlite3_int64)(maxatime > clock ? maxatime : clock));
		sqlite3_bind_int64(c->w.state_set, 3, (sqlite3_int64)nslots);
		rc = step_done(c->w.state_set);
		if (rc != SQLITE_OK)
			return rc;
		bytes = sum;
	}
	c->bytes = bytes;
	return SQLITE_OK;
}

/* The database's page size.  Read each time the disk use is: another
 * process sharing the directory may have rewritten an old cache with
 * smaller pages (small_pages) since this one opened it. */
static int set_page_size(struct cache *c, long long size)
{
	if (size < 512 || size > CACHE_PAGE_MAX)
		return SQLITE_CORRUPT;
	c->page_size = (unsigned)size;
	return SQLITE_OK;
}

/* keep_free_bytes in pages of the database. */
static long long keep_free_pages(const struct cache *c)
{
	return (long long)(c->keep_free_bytes / c->page_size);
}

/* A cache made with larger pages (before the slot file) is rewritten with
 * CACHE_PAGE_SIZE pages when its database is no larger than the journal
 * may be: VACUUM journals the whole file, and the disk bound leaves the
 * journal that much room.  A larger one (blocks of schema 2 in its blobs)
 * keeps its pages; so does one that another process holds open. */
static int small_pages(struct cache *c)
{
	char sql[64];
	struct stat st;
	int rc;
	long long size = pragma_int(c->wdb, "PRAGMA page_size", &rc);
	if (rc != SQLITE_OK)
		return rc;
	if (size != CACHE_PAGE_SIZE && stat(c->path, &st) == 0 &&
	    (uint64_t)st.st_size <= c->journal) {
		snprintf(sql, sizeof(sql), "PRAGMA page_size=%d; VACUUM;", CACHE_PAGE_SIZE);
		rc = exec(c->wdb, sql);
		if (rc == SQLITE_OK)
			log_info("block cache %s: rewritten with %d-byte pages (were %lld)",
			         c->path, CACHE_PAGE_SIZE, size);
		else if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_FULL)
			log_debug("block cache %s: keeps its %lld-byte pages: %s", c->path, size,
			          sqlite3_errmsg(c->wdb));
		else
			return rc;
		size = pragma_int(c->wdb, "PRAGMA page_size", &rc);
		if (rc != SQLITE_OK)
			return rc;
	}
	return set_page_size(c, size);
}

/* Open the writer connection and check the file.  0 ok; 1 the file is not
 * a usable cache (move it aside); -1 another error (e set). */
static int try_open(struct cache *c, struct err *e)
{
	long long appid, version, ntables;
	int rc, fd;
	char sql[256];

	/* Create the file ourselves so it is 0600 whatever the umask. */
	fd = open(c->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_errno(e, "opening block cache %s", c->path);
	close(fd);

	rc = open_conn(c->path, WRITER_CACHE_KIB, &c->wdb);
	if (rc != SQLITE_OK) {
		if (is_corruption(rc))
			return 1;
		return db_err(e, NULL, rc, "opening the database");
	}
	appid = pragma_int(c->wdb, "PRAGMA application_id", &rc);
	if (rc != SQLITE_OK)
		goto fail;
	version = pragma_int(c->wdb, "PRAGMA user_version", &rc);
	if (rc != SQLITE_OK)
		goto fail;
	ntables = pragma_int(c->wdb, "SELECT count(*) FROM sqlite_schema", &rc);
	if (rc != SQLITE_OK)
		goto fail;
	if (appid == 0 && version == 0 && ntables == 0) {
		rc = init_schema(c->wdb);
		if (rc != SQLITE_OK)
			goto fail;
	} else if (appid == CACHE_APP_ID && version >= 1 && version < CACHE_SCHEMA_VERSION) {
		rc = migrate(c->wdb, version);
		if (rc != SQLITE_OK)
			goto fail;
	} else if (appid != CACHE_APP_ID || version != CACHE_SCHEMA_VERSION) {
		log_warn("block cache %s: not an imgstore cache of schema %d (application_id %lld, "
		         "version %lld)",
		         c->path, CACHE_SCHEMA_VERSION, appid, version);
		return 1;
	}
	/* Per-connection settings.  secure_delete is on in Debian's build: it
	 * would overwrite every evicted block with zeros, doubling the writes. */
	snprintf(sql, sizeof(sql),
	         "PRAGMA journal_mode=" CACHE_JOURNAL "; PRAGMA secure_delete=OFF; "
	         "PRAGMA journal_size_limit=%u; PRAGMA synchronous=FULL; PRAGMA cache_spill=OFF;",
	         (unsigned)c->journal);
	rc = exec(c->wdb, sql);
	if (rc == SQLITE_OK)
		rc = small_pages(c);
	if (rc != SQLITE_OK)
		goto fail;
	rc = prepare_writer(c);
	if (rc != SQLITE_OK)
		goto fail;
	rc = audit_slots(c);
	if (rc == SQLITE_OK)
		rc = load_state(c);
	if (rc != SQLITE_OK)
		goto fail;
	return 0;
fail:
	if (is_corruption(rc) || (rc & 0xff) == SQLITE_ERROR) {
		/* SQLITE_ERROR here: a table or column of the schema is missing. */
		log_warn("block cache %s: %s", c->path, sqlite3_errmsg(c->wdb));
		return 1;
	}
	return db_err(e, c->wdb, rc, "opening the database");
}

static void close_writer_conn(struct cache *c)
{
	finalize_writer(c);
	sqlite3_close(c->wdb);
	c->wdb = NULL;
}

static void move_aside(struct cache *c, const char *why)
{
	static const char *const sfx[] = {"", "-wal", "-journal"};
	char stamp[32], from[PATH_MAX], to[PATH_MAX];
	time_format_rfc3339(time(NULL), stamp);
	for (size_t i = 0; i < 3; i++) {
		snprintf(from, sizeof(from), "%s%s", c->path, sfx[i]);
		snprintf(to, sizeof(to), "%s/" CACHE_CORRUPT_TAG "-%s%s", c->dir, stamp, sfx[i]);
		if (rename(from, to) && errno != ENOENT)
			log_warn("block cache: cannot move %s aside: %s", from, strerror(errno));
	}
	snprintf(from, sizeof(from), "%s-shm", c->path);
	unlink(from);
	/* the slots mean nothing without the index that named them */
	unlink(c->slots_path);
	unlink(c->marker);
	log_warn("block cache %s %s: moved it to %s/" CACHE_CORRUPT_TAG "-%s and started a fresh "
	         "cache",
	         c->path, why, c->dir, stamp);
}

/* ---- read connection pool ---- */

static void rconn_free(struct rconn *r)
{
	if (!r)
		return;
	sqlite3_finalize(r->lookup);
	sqlite3_finalize(r->meta_get);
	sqlite3_close(r->db);
	free(r);
}

static struct rconn *rconn_open(struct cache *c, struct err *e)
{
	struct rconn *r = calloc(1, sizeof(*r));
	int rc;
	if (!r) {
		err_set(e, ERR_IO, "out of memory");
		return NULL;
	}
	rc = open_conn(c->path, READER_CACHE_KIB, &r->db);
	if (rc == SQLITE_OK)
		rc = exec(r->db, "PRAGMA query_only=1");
	if (rc == SQLITE_OK)
		rc = prepare(r->db, "SELECT id, len, slot FROM idx WHERE key = ?1", &r->lookup);
	if (rc == SQLITE_OK)
		rc = prepare(r->db, "SELECT data FROM meta WHERE name = ?1", &r->meta_get);
	if (rc != SQLITE_OK) {
		db_err(e, r->db, rc, "opening a read connection");
		if (is_corruption(rc))
			mark_corrupt(c, rc);
		rconn_free(r);
		return NULL;
	}
	return r;
}

static struct rconn *conn_get(struct cache *c, struct err *e)
{
	struct rconn *r;
	pthread_mutex_lock(&c->pool_mu);
	while (!c->pool && c->nconns >= POOL_MAX)
		pthread_cond_wait(&c->pool_cv, &c->pool_mu);
	if ((r = c->pool)) {
		c->pool = r->next;
		pthread_mutex_unlock(&c->pool_mu);
		return r;
	}
	c->nconns++;
	pthread_mutex_unlock(&c->pool_mu);
	r = rconn_open(c, e);
	if (!r) {
		pthread_mutex_lock(&c->pool_mu);
		c->nconns--;
		pthread_cond_signal(&c->pool_cv);
		pthread_mutex_unlock(&c->pool_mu);
	}
	return r;
}

static void conn_put(struct cache *c, struct rconn *r)
{
	pthread_mutex_lock(&c->pool_mu);
	r->next = c->pool;
	c->pool = r;
	pthread_cond_signal(&c->pool_cv);
	pthread_mutex_unlock(&c->pool_mu);
}

/* ---- writer thread ---- */

struct batch {
	struct qent *head;
	size_t n;
	unsigned char (*touch)[CACHE_KEY_LEN];
	size_t ntouch;
	unsigned char del[DELETE_MAX][CACHE_KEY_LEN];
	size_t ndel;
	/* results, applied after a successful commit */
	uint64_t bytes, inserts, evictions, dropped;
	/* the slot file as of this transaction: slots in it, free ones; slots
	 * freed by this transaction are marked clock0 + 1 (see slot_free) */
	uint64_t clock0, nslots, nfree;
	int freed, wrote; /* slots freed; slots written (to sync before COMMIT) */
	int more;         /* the slot file can shrink further: another transaction */
};

/* Where a block of len bytes goes: a slot, or else a row of `blocks`. */
static int in_slot(size_t len)
{
	return len == SLOT_SIZE;
}

/* A column that is NULL for rows stored in `blocks`: -1 then. */
static sqlite3_int64 slot_col(sqlite3_stmt *st, int col)
{
	return sqlite3_column_type(st, col) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, col);
}

/* An SQLite code for an errno of the slot file. */
static int slot_rc(int err, int fallback)
{
	return err == ENOSPC || err == EDQUOT || err == EFBIG ? SQLITE_FULL : fallback;
}

/* Slot becomes free.  Not for this transaction's inserts: a reader may
 * still hold the row that named it, until COMMIT takes the EXCLUSIVE lock
 * (see the top). */
static int slot_free(struct cache *c, struct batch *b, sqlite3_int64 slot)
{
	int rc;
	sqlite3_bind_int64(c->w.free_add, 1, slot);
	sqlite3_bind_int64(c->w.free_add, 2, (sqlite3_int64)b->clock0 + 1);
	if ((rc = step_done(c->w.free_add)) != SQLITE_OK)
		return rc;
	b->nfree++;
	b->freed = 1;
	return SQLITE_OK;
}

/* The lowest free slot below `below` that an earlier transaction freed:
 * 1 (in *slot, no longer free), 0 none, or an SQLite error code < 0. */
static int slot_reuse(struct cache *c, struct batch *b, uint64_t below, sqlite3_int64 *slot)
{
	int rc;
	sqlite3_bind_int64(c->w.free_take, 1, (sqlite3_int64)b->clock0);
	sqlite3_bind_int64(c->w.free_take, 2, (sqlite3_int64)below);
	rc = sqlite3_step(c->w.free_take);
	if (rc == SQLITE_ROW)
		*slot = sqlite3_column_int64(c->w.free_take, 0);
	sqlite3_reset(c->w.free_take);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return -rc;
	sqlite3_bind_int64(c->w.free_del, 1, *slot);
	if ((rc = step_done(c->w.free_del)) != SQLITE_OK)
		return -rc;
	b->nfree--;
	return 1;
}

/* A slot for a new block: a free one, else one more at the end of the
 * file.  An SQLite code. */
static int slot_take(struct cache *c, struct batch *b, sqlite3_int64 *slot)
{
	int f = slot_reuse(c, b, b->nslots, slot);
	if (f < 0)
		return -f;
	if (f == 1)
		return SQLITE_OK;
	if (c->applied_max_pages) /* cache_test_set_max_pages: a full disk */
		return SQLITE_FULL;
	*slot = (sqlite3_int64)b->nslots++;
	return SQLITE_OK;
}

/* Delete the row of key (id and slot known: slot -1 for a row of blocks). */
static int delete_row(struct cache *c, struct batch *b, const void *key, sqlite3_int64 id,
                      sqlite3_int64 slot)
{
	int rc;
	checked_del(c, key);
	if (slot >= 0) {
		rc = slot_free(c, b, slot);
	} else {
		sqlite3_bind_int64(c->w.del_block, 1, id);
		rc = step_done(c->w.del_block);
	}
	if (rc != SQLITE_OK)
		return rc;
	sqlite3_bind_blob(c->w.del_idx, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	return step_done(c->w.del_idx);
}

static long long pragma_step(sqlite3_stmt *st, int *rc)
{
	long long v = 0;
	*rc = sqlite3_step(st);
	if (*rc == SQLITE_ROW) {
		v = sqlite3_column_int64(st, 0);
		*rc = SQLITE_OK;
	}
	sqlite3_reset(st);
	return v;
}

/* Bytes of database pages in use (not free), blocks and everything else. */
static int used_bytes(struct cache *c, uint64_t *out)
{
	int rc;
	long long total = pragma_step(c->w.page_count, &rc), nfree, size;
	if (rc != SQLITE_OK)
		return rc;
	nfree = pragma_step(c->w.freelist, &rc);
	if (rc != SQLITE_OK)
		return rc;
	size = pragma_step(c->w.page_size, &rc);
	if (rc == SQLITE_OK)
		rc = set_page_size(c, size);
	*out = total > nfree ? (uint64_t)(total - nfree) * c->page_size : 0;
	return rc;
}

/* The same, and the slots in use (free slots count as free pages do). */
static int used_disk(struct cache *c, const struct batch *b, uint64_t *out)
{
	int rc = used_bytes(c, out);
	if (b->nslots > b->nfree)
		*out += (b->nslots - b->nfree) * (uint64_t)SLOT_SIZE;
	return rc;
}

/* Evict least recently used rows until bytes + need <= limit and the pages
 * and slots in use leave room for `disk` more bytes (a block in a slot takes
 * the slot; one in `blocks` its overflow pages and a share of a leaf:
 * counted as need + one page).  Pinned rows are not
 * candidates: when only they are left, *blocked is set and the caller does
 * not insert (pins that do not fit leave the cache full, not over its
 * bound).  With a floor (not 0), rows whose LRU clock is floor or later
 * stay even then: evicting ahead never takes the rows its own transaction
 * stored or read (in a cache that pins nearly fill, it would store and drop
 * every block). */
static int evict(struct cache *c, struct batch *b, uint64_t need, uint64_t disk, uint64_t floor,
                 int *blocked)
{
	*blocked = 0;
	for (;;) {
		unsigned char key[CACHE_KEY_LEN];
		sqlite3_int64 id, len, atime, slot;
		uint64_t used = 0;
		int rc = used_disk(c, b, &used);
		if (rc != SQLITE_OK)
			return rc;
		if (b->bytes + need <= c->limit && used + disk <= c->target)
			break;
		rc = sqlite3_step(c->w.oldest);
		if (rc != SQLITE_ROW) {
			sqlite3_reset(c->w.oldest);
			if (rc != SQLITE_DONE)
				return rc;
			*blocked = 1;
			if (pragma_step(c->w.pins_any, &rc) || rc != SQLITE_OK)
				return rc; /* pinned rows hold the rest */
			/* Nothing left to evict (the listing alone may fill a
			 * small cache); a count that says otherwise was off. */
			if (b->bytes)
				log_warn("block cache: %llu bytes accounted but no rows left",
				         (unsigned long long)b->bytes);
			b->bytes = 0;
			break;
		}
		if (sqlite3_column_bytes(c->w.oldest, 0) != CACHE_KEY_LEN) {
			sqlite3_reset(c->w.oldest);
			return SQLITE_CORRUPT;
		}
		memcpy(key, sqlite3_column_blob(c->w.oldest, 0), CACHE_KEY_LEN);
		id = sqlite3_column_int64(c->w.oldest, 1);
		len = sqlite3_column_int64(c->w.oldest, 2);
		atime = sqlite3_column_int64(c->w.oldest, 3);
		slot = slot_col(c->w.oldest, 4);
		sqlite3_reset(c->w.oldest);
		if (floor && atime >= (sqlite3_int64)floor)
			break;
		rc = delete_row(c, b, key, id, slot);
		if (rc != SQLITE_OK)
			return rc;
		b->bytes = b->bytes > (uint64_t)len ? b->bytes - (uint64_t)len : 0;
		b->evictions++;
	}
	return SQLITE_OK;
}

/* 1 found (id, len, slot), 0 not, or an SQLite error code < 0 (negated). */
static int find(struct cache *c, const void *key, sqlite3_int64 *id, sqlite3_int64 *len,
                sqlite3_int64 *slot)
{
	int rc;
	sqlite3_bind_blob(c->w.find, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	rc = sqlite3_step(c->w.find);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(c->w.find, 0);
		*len = sqlite3_column_int64(c->w.find, 1);
		*slot = slot_col(c->w.find, 2);
		rc = 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -rc;
	}
	sqlite3_reset(c->w.find);
	return rc;
}

static int touch_key(struct cache *c, const void *key, uint64_t clock)
{
	sqlite3_bind_blob(c->w.touch, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(c->w.touch, 2, (sqlite3_int64)clock);
	return step_done(c->w.touch);
}

/* Free pages beyond a few go back to the file system
 * (auto_vacuum=INCREMENTAL): evictions and inserts share one transaction, so
 * inserts reuse the pages that evictions free, and what is left over would
 * only make the file larger than its pages in use. */
static int maybe_vacuum(struct cache *c)
{
	char sql[64];
	int rc;
	long long nfree = pragma_step(c->w.freelist, &rc);
	if (rc != SQLITE_OK || nfree <= keep_free_pages(c))
		return rc;
	snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%lld)", nfree - keep_free_pages(c));
	return exec(c->wdb, sql);
}

/* 1 when slot is free (*freed: its mark, see slot_free), 0 not, or an
 * SQLite error code < 0. */
static int slot_is_free(struct cache *c, sqlite3_int64 slot, sqlite3_int64 *freed)
{
	int rc;
	sqlite3_bind_int64(c->w.free_get, 1, slot);
	rc = sqlite3_step(c->w.free_get);
	if (rc == SQLITE_ROW)
		*freed = sqlite3_column_int64(c->w.free_get, 0);
	sqlite3_reset(c->w.free_get);
	return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -rc;
}

/* The key and length of the row in slot: 1, 0 none, or an SQLite error
 * code < 0. */
static int slot_row(struct cache *c, sqlite3_int64 slot, unsigned char *key, sqlite3_int64 *len)
{
	int rc;
	sqlite3_bind_int64(c->w.at_slot, 1, slot);
	rc = sqlite3_step(c->w.at_slot);
	if (rc == SQLITE_ROW) {
		if (sqlite3_column_bytes(c->w.at_slot, 0) != CACHE_KEY_LEN) {
			sqlite3_reset(c->w.at_slot);
			return -SQLITE_CORRUPT;
		}
		memcpy(key, sqlite3_column_blob(c->w.at_slot, 0), CACHE_KEY_LEN);
		*len = sqlite3_column_int64(c->w.at_slot, 1);
	}
	sqlite3_reset(c->w.at_slot);
	return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -rc;
}

/* Give the slot file back down to keep_free_slots free slots (a lower limit
 * than last time leaves many).  Free slots at its end are cut off; the
 * blocks of the last slots in use move to the lowest free ones (RELOCATE_MAX
 * per transaction), and the slots they leave are cut off by a later
 * transaction, once no reader can hold the rows that named them.  An SQLite
 * code. */
static int slots_shrink(struct cache *c, struct batch *b, uint64_t *clock)
{
	uint64_t n0 = b->nslots, moved = 0;
	int f, rc;
	for (uint64_t s = b->nslots; s-- > 0 && b->nfree > c->keep_free_slots;) {
		unsigned char key[CACHE_KEY_LEN];
		sqlite3_int64 freed = 0, to = 0, len = 0;
		if ((f = slot_is_free(c, (sqlite3_int64)s, &freed)) < 0)
			return -f;
		if (f) {
			if (s + 1 == b->nslots && freed <= (sqlite3_int64)b->clock0) {
				sqlite3_bind_int64(c->w.free_del, 1, (sqlite3_int64)s);
				if ((rc = step_done(c->w.free_del)) != SQLITE_OK)
					return rc;
				b->nfree--;
				b->nslots--;
			}
			continue;
		}
		if (moved == RELOCATE_MAX)
			break;
		if ((f = slot_row(c, (sqlite3_int64)s, key, &len)) < 0)
			return -f;
		if (!f) { /* neither free nor in use: free it */
			if ((rc = slot_free(c, b, (sqlite3_int64)s)) != SQLITE_OK)
				return rc;
			continue;
		}
		if ((f = slot_reuse(c, b, s, &to)) < 0)
			return -f;
		if (!f)
			break; /* no free slot below it that a reader cannot hold */
		f = slots_copy(&c->slots, s, (uint64_t)to);
		if (f < 0)
			return slot_rc(errno, SQLITE_IOERR_WRITE);
		b->wrote = 1;
		if (f == 0) { /* the file lost the block: the row goes */
			if ((rc = slot_free(c, b, to)) != SQLITE_OK ||
			    (rc = delete_row(c, b, key, 0, (sqlite3_int64)s)) != SQLITE_OK)
				return rc;
			b->bytes = b->bytes > (uint64_t)len ? b->bytes - (uint64_t)len : 0;
			continue;
		}
		/* a new id: the checked set must not take the copy for the row it
		 * checked (the copy is of bytes on disk, not of bytes checked) */
		checked_del(c, key);
		sqlite3_bind_blob(c->w.relocate, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
		sqlite3_bind_int64(c->w.relocate, 2, to);
		*clock += 1;
		sqlite3_bind_int64(c->w.relocate, 3, -(sqlite3_int64)*clock);
		if ((rc = step_done(c->w.relocate)) != SQLITE_OK ||
		    (rc = slot_free(c, b, (sqlite3_int64)s)) != SQLITE_OK)
			return rc;
		moved++;
	}
	if (b->nslots < n0 && slots_trim(&c->slots, b->nslots))
		return slot_rc(errno, SQLITE_IOERR_TRUNCATE);
	b->more = b->nfree > c->keep_free_slots && (moved || b->nslots < n0 || b->freed);
	return SQLITE_OK;
}

/* Store one queued block: in a slot when it is SLOT_SIZE long, else a row
 * of blocks.  An SQLite code. */
static int insert_block(struct cache *c, struct batch *b, struct qent *q, uint64_t *clock)
{
	sqlite3_int64 id, slot = -1, atime;
	int rc;
	*clock += 1;
	atime = (sqlite3_int64)*clock;
	if (in_slot(q->len)) {
		if ((rc = slot_take(c, b, &slot)) != SQLITE_OK)
			return rc;
		if (slots_write(&c->slots, (uint64_t)slot, q->data))
			return slot_rc(errno, SQLITE_IOERR_WRITE);
		b->wrote = 1;
		/* a slot is reused: the id (the checked set's) is the clock */
		id = -atime;
	} else {
		sqlite3_bind_blob64(c->w.ins_block, 1, q->data, q->len, SQLITE_STATIC);
		if ((rc = step_done(c->w.ins_block)) != SQLITE_OK)
			return rc;
		id = sqlite3_last_insert_rowid(c->wdb);
	}
	sqlite3_bind_blob(c->w.ins_idx, 1, q->key, CACHE_KEY_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(c->w.ins_idx, 2, id);
	sqlite3_bind_int64(c->w.ins_idx, 3, (sqlite3_int64)q->len);
	sqlite3_bind_int64(c->w.ins_idx, 4, atime);
	if (slot >= 0)
		sqlite3_bind_int64(c->w.ins_idx, 5, slot);
	else
		sqlite3_bind_null(c->w.ins_idx, 5);
	if ((rc = step_done(c->w.ins_idx)) != SQLITE_OK)
		return rc;
	q->id = id;
	return SQLITE_OK;
}

static int run_batch(struct cache *c, struct batch *b)
{
	uint64_t clock;
	sqlite3_int64 id = 0, len = 0, slot = -1;
	int rc, f, blocked;

	rc = step_done(c->w.begin);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(c->w.state_get);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(c->w.state_get);
		rc = rc == SQLITE_DONE ? SQLITE_CORRUPT : rc;
		goto fail;
	}
	b->bytes = (uint64_t)sqlite3_column_int64(c->w.state_get, 0);
	clock = b->clock0 = (uint64_t)sqlite3_column_int64(c->w.state_get, 1);
	b->nslots = (uint64_t)sqlite3_column_int64(c->w.state_get, 2);
	sqlite3_reset(c->w.state_get);
	b->nfree = (uint64_t)pragma_step(c->w.free_count, &rc);
	if (rc != SQLITE_OK)
		goto fail;
	/* a transaction that added slots and rolled back left them in the file */
	if (slots_trim(&c->slots, b->nslots)) {
		rc = slot_rc(errno, SQLITE_IOERR_TRUNCATE);
		goto fail;
	}

	for (size_t i = 0; i < b->ndel; i++) {
		f = find(c, b->del[i], &id, &len, &slot);
		if (f < 0) {
			rc = -f;
			goto fail;
		}
		if (f == 1) {
			if ((rc = delete_row(c, b, b->del[i], id, slot)) != SQLITE_OK)
				goto fail;
			b->bytes = b->bytes > (uint64_t)len ? b->bytes - (uint64_t)len : 0;
		}
	}
	for (size_t i = 0; i < b->ntouch; i++)
		if ((rc = touch_key(c, b->touch[i], ++clock)) != SQLITE_OK)
			goto fail;
	for (struct qent *q = b->head; q; q = q->next) {
		f = find(c, q->key, &id, &len, &slot);
		if (f < 0) {
			rc = -f;
			goto fail;
		}
		if (f == 1 &&
		    len == (sqlite3_int64)q->len) { /* cached (another reader got it too) */
			if ((rc = touch_key(c, q->key, ++clock)) != SQLITE_OK)
				goto fail;
			continue;
		}
		if (f == 1) {
			/* another length under this key: the caller checked its bytes
			 * against the key, so the row cannot be right */
			if ((rc = delete_row(c, b, q->key, id, slot)) != SQLITE_OK)
				goto fail;
			b->bytes = b->bytes > (uint64_t)len ? b->bytes - (uint64_t)len : 0;
		}
		if (q->len > c->limit) {
			b->dropped++;
			continue;
		}
		if ((rc = evict(c, b, q->len, in_slot(q->len) ? SLOT_SIZE : q->len + c->page_size,
		                0, &blocked)) != SQLITE_OK)
			goto fail;
		if (blocked && b->bytes + q->len > c->limit) {
			b->dropped++; /* the rest is pinned */
			continue;
		}
		if ((rc = insert_block(c, b, q, &clock)) != SQLITE_OK)
			goto fail;
		b->bytes += q->len;
		b->inserts++;
	}
	/* The limit may have been lowered since the last run; and room for the
	 * next batch (see evict_ahead), from rows older than this one. */
	if ((rc = evict(c, b, 0, 0, 0, &blocked)) != SQLITE_OK)
		goto fail;
	if (c->evict_ahead && (rc = evict(c, b, c->evict_ahead, c->evict_ahead + c->page_size,
	                                  b->clock0 + 1, &blocked)) != SQLITE_OK)
		goto fail;
	if ((rc = slots_shrink(c, b, &clock)) != SQLITE_OK)
		goto fail;
	if ((rc = maybe_vacuum(c)) != SQLITE_OK)
		goto fail;
	/* the slots freed here are reused from the next transaction on, whose
	 * clock0 must be past their mark */
	if (b->freed && clock <= b->clock0)
		clock = b->clock0 + 1;
	sqlite3_bind_int64(c->w.state_set, 1, (sqlite3_int64)b->bytes);
	sqlite3_bind_int64(c->w.state_set, 2, (sqlite3_int64)clock);
	sqlite3_bind_int64(c->w.state_set, 3, (sqlite3_int64)b->nslots);
	if ((rc = step_done(c->w.state_set)) != SQLITE_OK)
		goto fail;
	/* a committed row names a slot whose bytes are on disk */
	if (b->wrote && slots_sync(&c->slots)) {
		rc = slot_rc(errno, SQLITE_IOERR_FSYNC);
		goto fail;
	}
	if ((rc = step_done(c->w.commit)) != SQLITE_OK)
		goto fail;
	return SQLITE_OK;
fail:
	step_done(c->w.rollback);
	return rc;
}

/* Writer thread: replace the pinned keys of one owner, in one transaction. */
static int run_pins(struct cache *c, struct meta_req *r)
{
	const unsigned char(*keys)[CACHE_KEY_LEN] = r->data;
	int rc = step_done(c->w.begin);
	if (rc != SQLITE_OK)
		return rc;
	sqlite3_bind_text(c->w.pins_del, 1, r->name, -1, SQLITE_STATIC);
	rc = step_done(c->w.pins_del);
	sqlite3_clear_bindings(c->w.pins_del);
	for (size_t i = 0; rc == SQLITE_OK && i < r->len; i++) {
		sqlite3_bind_blob(c->w.pins_ins, 1, keys[i], CACHE_KEY_LEN, SQLITE_STATIC);
		sqlite3_bind_text(c->w.pins_ins, 2, r->name, -1, SQLITE_STATIC);
		rc = step_done(c->w.pins_ins);
	}
	sqlite3_clear_bindings(c->w.pins_ins);
	if (rc == SQLITE_OK)
		rc = step_done(c->w.commit);
	if (rc != SQLITE_OK)
		step_done(c->w.rollback);
	return rc;
}

/* Writer thread: run the queued meta writes, each its own transaction. */
static void run_meta(struct cache *c, struct meta_req *list)
{
	for (struct meta_req *r = list; r; r = r->next) {
		if (r->pins) {
			r->rc = run_pins(c, r);
			if (r->rc != SQLITE_OK) {
				snprintf(r->msg, sizeof(r->msg), "%s (SQLite %d)",
				         sqlite3_errmsg(c->wdb), r->rc);
				if (is_corruption(r->rc))
					mark_corrupt(c, r->rc);
			}
			continue;
		}
		sqlite3_bind_text(c->w.meta_put, 1, r->name, -1, SQLITE_STATIC);
		sqlite3_bind_blob64(c->w.meta_put, 2, r->data, r->len, SQLITE_STATIC);
		r->rc = step_done(c->w.meta_put);
		sqlite3_clear_bindings(c->w.meta_put);
		if (r->rc != SQLITE_OK) {
			snprintf(r->msg, sizeof(r->msg), "%s (SQLite %d)", sqlite3_errmsg(c->wdb),
			         r->rc);
			if (is_corruption(r->rc))
				mark_corrupt(c, r->rc);
		}
	}
}

static void apply_test_knobs(struct cache *c)
{
	char sql[64];
	unsigned want = c->test_max_pages;
	if (want == c->applied_max_pages)
		return;
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count=%u", want ? want : 1073741823u);
	exec(c->wdb, sql);
	c->applied_max_pages = want;
}

/* Take the next batch off the queue (mu held). */
static void take_batch(struct cache *c, struct batch *b)
{
	size_t bytes = 0;
	struct qent **tail = &b->head;
	while (c->qhead && b->n < BATCH_MAX_BLOCKS &&
	       (!b->n || bytes + c->qhead->len <= c->batch_bytes)) {
		struct qent *q = c->qhead;
		c->qhead = q->next;
		q->next = NULL;
		*tail = q;
		tail = &q->next;
		bytes += q->len;
		b->n++;
	}
	if (!c->qhead)
		c->qtail = NULL;
	/* Every transaction takes the recorded hits along (see the top).  Swap
	 * the hit buffer with the spare: readers keep appending. */
	b->touch = c->touch;
	b->ntouch = c->ntouch;
	c->touch = c->touch_spare;
	c->touch_spare = b->touch;
	if (c->ntouch)
		memset(c->touch_slot, 0, TOUCH_SLOTS * sizeof(*c->touch_slot));
	c->ntouch = 0;
	memcpy(b->del, c->del, c->ndel * CACHE_KEY_LEN);
	b->ndel = c->ndel;
	c->ndel = 0;
}

/* Recorded hits that need a transaction of their own (mu held). */
static int touch_due(struct cache *c)
{
	return c->ntouch && (c->stop || c->ntouch >= TOUCH_MAX ||
	                     time_mono() >= c->touch_since + c->touch_interval);
}

static int has_work(struct cache *c)
{
	return c->qhead || c->ndel || c->need_evict || c->meta_head ||
	       c->flush_done != c->flush_gen || touch_due(c);
}

/* Sleep until there is work, or until the recorded hits are due (mu held). */
static void writer_wait(struct cache *c)
{
	struct timespec ts;
	double at;
	if (!c->ntouch) {
		pthread_cond_wait(&c->wake, &c->mu);
		return;
	}
	/* wake is on CLOCK_MONOTONIC, the clock of time_mono() */
	at = c->touch_since + c->touch_interval;
	if (at > time_mono() + 3600)
		at = time_mono() + 3600;
	ts.tv_sec = (time_t)at;
	ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_nsec = 999999999L;
	pthread_cond_timedwait(&c->wake, &c->mu, &ts);
}

static void *writer_main(void *arg)
{
	struct cache *c = arg;

	/* its own name in top -H and in the benchmarks' CPU split */
	pthread_setname_np(pthread_self(), "cache-writer");
	pthread_mutex_lock(&c->mu);
	for (;;) {
		struct batch b;
		struct qent *skipped;
		uint64_t touch_target, put_target;
		double now;
		struct meta_req *meta;
		int rc, ran, evict_only;

		while (!c->stop && !has_work(c))
			writer_wait(c);
		if (c->stop && !has_work(c))
			break;

		memset(&b, 0, sizeof(b));
		take_batch(c, &b);
		put_target = c->done_seq + b.n;
		touch_target = c->touch_seq;
		now = time_mono();
		skipped = NULL;
		if (now < c->degraded_until || atomic_load(&c->corrupt)) {
			/* Disk full or damaged: do not even try. */
			skipped = b.head;
			b.head = NULL;
			b.dropped = b.n;
			b.ntouch = 0;
		}
		evict_only = c->need_evict;
		c->need_evict = 0;
		meta = c->meta_head;
		c->meta_head = NULL;
		apply_test_knobs(c);
		pthread_mutex_unlock(&c->mu);

		if (meta) {
			run_meta(c, meta);
			evict_only = 1; /* the listing counts against the disk bound too */
		}

		rc = SQLITE_OK;
		ran = b.head || b.ntouch || b.ndel || evict_only;
		if (ran) {
			rc = run_batch(c, &b);
			/* SQLite keeps up to ~120 of a batch's pages (7.9 MiB) in
			 * the writer's cache after the COMMIT, whatever cache_size
			 * says; given back, the next batch reuses the same heap
			 * (tests/bench/README.md, cold.sh). */
			sqlite3_db_release_memory(c->wdb);
			if (rc == SQLITE_OK) {
				/* written from bytes the caller had checked */
				for (struct qent *q = b.head; q; q = q->next)
					checked_add(c, q->key, q->id);
				if (b.head && atomic_exchange(&c->full_logged, 0))
					log_info("block cache %s: caching again", c->path);
			}
		}

		pthread_mutex_lock(&c->mu);
		if (rc == SQLITE_OK) {
			if (ran) {
				c->bytes = b.bytes;
				c->commits++;
				if (b.more)
					c->need_evict = 1;
			}
			atomic_fetch_add(&c->inserts, b.inserts);
			atomic_fetch_add(&c->evictions, b.evictions);
			atomic_fetch_add(&c->dropped, b.dropped);
		} else {
			atomic_fetch_add(&c->dropped, b.n);
			if (is_disk_full(rc)) {
				c->degraded_until = time_mono() + c->full_backoff;
				if (!atomic_exchange(&c->full_logged, 1))
					log_warn("block cache %s: disk full (%s): not caching for "
					         "%g s; reads are not affected",
					         c->path, sqlite3_errstr(rc), c->full_backoff);
			} else if (is_corruption(rc)) {
				mark_corrupt(c, rc);
			} else {
				c->degraded_until = time_mono() + ERROR_BACKOFF_S;
				if (c->degraded_until > c->next_err_log) {
					c->next_err_log = c->degraded_until + 60;
					log_warn("block cache %s: write failed: %s; retrying in "
					         "%g s",
					         c->path, sqlite3_errstr(rc), ERROR_BACKOFF_S);
				}
			}
		}
		for (int k = 0; k < 2; k++)
			for (struct qent *q = k ? skipped : b.head; q; q = q->next)
				c->qbytes -= q->len;
		/* release callbacks take their owner's locks: not under ours */
		pthread_mutex_unlock(&c->mu);
		for (int k = 0; k < 2; k++) {
			for (struct qent *q = k ? skipped : b.head, *next; q; q = next) {
				next = q->next;
				qent_free(q);
			}
		}
		pthread_mutex_lock(&c->mu);
		for (struct meta_req *r = meta; r; r = r->next)
			r->done = 1;
		c->done_seq = put_target;
		if (touch_target > c->touch_done)
			c->touch_done = touch_target;
		if (c->flush_done != c->flush_gen && c->done_seq >= c->flush_put_target &&
		    c->touch_done >= c->flush_touch_target && !c->ndel)
			c->flush_done = c->flush_gen;
		pthread_cond_broadcast(&c->done);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ---- public API ---- */

static void cache_free(struct cache *c)
{
	struct rconn *r, *next;
	if (!c)
		return;
	for (r = c->pool; r; r = next) {
		next = r->next;
		rconn_free(r);
	}
	if (c->wdb)
		close_writer_conn(c);
	for (struct qent *q = c->qhead, *n; q; q = n) {
		n = q->next;
		qent_free(q);
	}
	free(c->touch);
	free(c->touch_spare);
	free(c->touch_slot);
	free(c->del);
	free(c->dir);
	free(c->path);
	free(c->marker);
	free(c->slots_path);
	slots_close(&c->slots);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->wake);
	pthread_cond_destroy(&c->done);
	pthread_mutex_destroy(&c->pool_mu);
	pthread_cond_destroy(&c->pool_cv);
	pthread_mutex_destroy(&c->chk_mu);
	free(c->chk);
	free(c);
}

/* SQLite gives each connection's page cache a first bulk of 20 pages
 * (1.3 MiB of 64 KiB pages) when it reads the schema, before cache_size
 * applies: with the pool of read connections most of SQLite's memory was
 * that.  Without it, pages come one at a time, up to cache_size.  Only
 * possible before SQLite initializes (SQLITE_MISUSE after: harmless). */
static void sqlite_config_once(void)
{
	sqlite3_config(SQLITE_CONFIG_PAGECACHE, NULL, 0, 0);
}

int cache_open(const struct cache_opts *o, struct cache **out, struct err *e)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct cache *c;
	pthread_condattr_t ca;
	struct rconn *r;
	uint64_t jl, tx, reserve, used = 0;
	long long nfree = 0, nslots = 0, nfree_slots = 0;
	int rc;

	*out = NULL;
	if (!o->dir || !*o->dir)
		return err_set(e, ERR_USAGE, "block cache: no cache directory given");
	pthread_once(&once, sqlite_config_once);
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(e, ERR_IO, "out of memory");
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&c->done, NULL);
	pthread_mutex_init(&c->pool_mu, NULL);
	pthread_cond_init(&c->pool_cv, NULL);
	pthread_mutex_init(&c->chk_mu, NULL);
	c->slots.fd = c->slots.direct_fd = -1;
	c->limit = o->limit_bytes;
	c->full_backoff = FULL_BACKOFF_S;
	c->touch_interval = TOUCH_INTERVAL_S;
	/* Small limits get small transactions and journals; the disk bound (see
	 * the top) takes what the journal and a transaction may need from the
	 * blocks of a large cache, never more than the limit from a small one. */
	c->batch_bytes = c->limit / 4;
	if (c->batch_bytes < (1u << 20))
		c->batch_bytes = 1u << 20;
	if (c->batch_bytes > BATCH_MAX_BYTES)
		c->batch_bytes = BATCH_MAX_BYTES;
	jl = c->limit / 8;
	if (jl < (1u << 20))
		jl = 1u << 20;
	if (jl > (16u << 20))
		jl = 16u << 20;
	c->journal = jl;
	/* a transaction: a batch, or one block (never more than the limit) */
	tx = c->limit < TX_MAX_BLOCK ? c->limit : TX_MAX_BLOCK;
	if (tx < c->batch_bytes)
		tx = c->batch_bytes;
	c->evict_ahead = c->limit >= AHEAD_MIN_BATCHES * c->batch_bytes ? c->batch_bytes : 0;
	/* the pages evict_ahead frees, and those of one block's leaf share */
	c->keep_free_bytes =
	        KEEP_FREE_BYTES + c->evict_ahead + (c->evict_ahead ? 2 * CACHE_PAGE_MAX : 0);
	/* free slots: those a batch's evictions free (reused by the next one),
	 * or those evict_ahead frees */
	c->keep_free_slots = (c->batch_bytes + c->evict_ahead) / SLOT_SIZE;
	/* A transaction grows the file by a batch at most, and the free slots
	 * it leaves are what the next one reuses: one room serves both. */
	if (tx < c->keep_free_slots * SLOT_SIZE)
		tx = c->keep_free_slots * SLOT_SIZE;
	reserve = jl + tx + TX_INDEX_BYTES + c->keep_free_bytes + (1u << 20);
	c->target = c->limit + DISK_SLACK > reserve ? c->limit + DISK_SLACK - reserve : 0;
	c->dir = strdup(o->dir);
	c->path = path_join(o->dir, CACHE_DB_NAME);
	c->marker = path_join(o->dir, CACHE_CORRUPT_TAG);
	c->slots_path = path_join(o->dir, CACHE_BLOCKS_NAME);
	c->touch = malloc(TOUCH_MAX * CACHE_KEY_LEN);
	c->touch_spare = malloc(TOUCH_MAX * CACHE_KEY_LEN);
	c->touch_slot = calloc(TOUCH_SLOTS, sizeof(*c->touch_slot));
	c->del = malloc(DELETE_MAX * CACHE_KEY_LEN);
	if (!c->dir || !c->path || !c->marker || !c->slots_path || !c->touch || !c->touch_spare ||
	    !c->touch_slot || !c->del) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	if (mkdir_p(o->dir, e))
		goto fail;

	if (access(c->marker, F_OK) == 0)
		move_aside(c, "was found damaged during the last run");
	rc = try_open(c, e);
	if (rc == 1) {
		close_writer_conn(c);
		move_aside(c, "is not a usable cache database");
		rc = try_open(c, e);
		if (rc == 1)
			err_set(e, ERR_IO, "block cache %s: cannot create a fresh database",
			        c->path);
	}
	if (rc)
		goto fail;
	if (slots_open(&c->slots, c->slots_path)) {
		err_errno(e, "opening %s", c->slots_path);
		goto fail;
	}

	if ((rc = used_bytes(c, &used)) == SQLITE_OK)
		nfree = pragma_step(c->w.freelist, &rc);
	if (rc == SQLITE_OK)
		nslots = pragma_int(c->wdb, "SELECT nslots FROM state", &rc);
	if (rc == SQLITE_OK)
		nfree_slots = pragma_step(c->w.free_count, &rc);
	if (rc == SQLITE_OK && nslots > nfree_slots)
		used += (uint64_t)(nslots - nfree_slots) * SLOT_SIZE;
	if (rc != SQLITE_OK) {
		db_err(e, c->wdb, rc, "reading the database size");
		goto fail;
	}

	/* One read connection up front: it proves the readers can open. */
	if (!(r = rconn_open(c, e)))
		goto fail;
	c->pool = r;
	c->nconns = 1;

	if (pthread_create(&c->writer, NULL, writer_main, c)) {
		err_set(e, ERR_IO, "block cache: cannot start the writer thread");
		goto fail;
	}
	c->writer_started = 1;
	if (c->bytes > c->limit || used > c->target || nfree > keep_free_pages(c) ||
	    nfree_slots > (long long)c->keep_free_slots) {
		/* a lower limit than last time, or a shrink cut short */
		pthread_mutex_lock(&c->mu);
		c->need_evict = 1;
		pthread_cond_signal(&c->wake);
		pthread_mutex_unlock(&c->mu);
	}
	log_debug("block cache %s: %llu of %llu bytes used", c->path, (unsigned long long)c->bytes,
	          (unsigned long long)c->limit);
	*out = c;
	return 0;
fail:
	err_prefix(e, "opening block cache in %s", o->dir);
	cache_free(c);
	return -1;
}

void cache_close(struct cache *c)
{
	if (!c)
		return;
	if (c->writer_started) {
		pthread_mutex_lock(&c->mu);
		c->stop = 1;
		pthread_cond_signal(&c->wake);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->writer, NULL);
	}
	cache_free(c);
}

/* Record a hit for the LRU, once per key until the writer applies it (see
 * the top).  A full set waits for the writer; the hits it misses meanwhile
 * only make the order coarser. */
static void record_touch(struct cache *c, const unsigned char *key)
{
	uint64_t h;
	size_t i;
	memcpy(&h, key, sizeof(h)); /* keys are hashes: any 8 bytes are uniform */
	pthread_mutex_lock(&c->mu);
	for (i = h & (TOUCH_SLOTS - 1); c->touch_slot[i]; i = (i + 1) & (TOUCH_SLOTS - 1))
		if (!memcmp(c->touch[c->touch_slot[i] - 1], key, CACHE_KEY_LEN))
			break;
	if (!c->touch_slot[i] && c->ntouch < TOUCH_MAX) {
		memcpy(c->touch[c->ntouch++], key, CACHE_KEY_LEN);
		c->touch_slot[i] = (uint16_t)c->ntouch;
		if (c->ntouch == 1) {
			/* the writer sets its timer */
			c->touch_since = time_mono();
			pthread_cond_signal(&c->wake);
		} else if (c->ntouch == TOUCH_MAX) {
			pthread_cond_signal(&c->wake);
		}
	}
	c->touch_seq++;
	pthread_mutex_unlock(&c->mu);
}

static void queue_delete(struct cache *c, const unsigned char *key)
{
	pthread_mutex_lock(&c->mu);
	if (c->ndel < DELETE_MAX) {
		memcpy(c->del[c->ndel++], key, CACHE_KEY_LEN);
		pthread_cond_signal(&c->wake);
	}
	pthread_mutex_unlock(&c->mu);
}

int cache_get(struct cache *c, const unsigned char key[CACHE_KEY_LEN], void *buf, size_t len,
              struct err *e)
{
	return cache_get_range(c, key, len, 0, buf, len, 0, e);
}

int cache_get_range(struct cache *c, const unsigned char key[CACHE_KEY_LEN], size_t len, size_t off,
                    void *buf, size_t n, unsigned flags, struct err *e)
{
	struct rconn *r;
	sqlite3_blob *blob = NULL;
	sqlite3_int64 id = 0, stored, slot;
	ssize_t got;
	int rc, ret = -1, drop = 0, check = 0;

	if (atomic_load(&c->corrupt) || !len || len > INT_MAX || !n || off > len || n > len - off) {
		atomic_fetch_add(&c->misses, 1);
		return 0;
	}
	if (!(r = conn_get(c, e))) {
		atomic_fetch_add(&c->misses, 1);
		return -1;
	}
	sqlite3_bind_blob(r->lookup, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	rc = sqlite3_step(r->lookup);
	if (rc == SQLITE_DONE) {
		ret = 0;
		goto out;
	}
	if (rc != SQLITE_ROW) {
		db_err(e, r->db, rc, "looking up a block");
		goto out;
	}
	id = sqlite3_column_int64(r->lookup, 0);
	stored = sqlite3_column_int64(r->lookup, 1);
	slot = slot_col(r->lookup, 2);
	if (stored != (sqlite3_int64)len) {
		/* the caller expects another length under this key: a miss, and
		 * the row stays (whoever is wrong, a check finds it) */
		ret = 0;
		goto out;
	}
	if ((flags & CACHE_CHECK) && !checked_has(c, key, id)) {
		if (off || n != len) {
			ret = CACHE_UNCHECKED;
			goto out;
		}
		check = 1;
	}
	/* The lookup statement is still active: same snapshot, and the writer
	 * reuses no slot that a row in it names (slot_free). */
	if (slot >= 0) {
		if (!in_slot(len) || slot >= SLOTS_MAX) { /* not what the writer stores */
			ret = 0;
			drop = 1;
			goto out;
		}
		got = slots_read(&c->slots, (uint64_t)slot, off, buf, n);
		if (got < 0) {
			err_errno(e, "block cache: reading %s", c->slots_path);
			goto out;
		}
		if ((size_t)got < n) { /* the file is shorter than its index says */
			ret = 0;
			drop = 1;
			goto out;
		}
		ret = 1;
		goto out;
	}
	rc = sqlite3_blob_open(r->db, "main", "blocks", "data", id, 0, &blob);
	if (rc == SQLITE_ERROR) { /* no such row: idx and blocks disagree */
		ret = 0;
		drop = 1;
		goto out;
	}
	if (rc != SQLITE_OK) {
		db_err(e, r->db, rc, "opening a block");
		goto out;
	}
	if ((size_t)sqlite3_blob_bytes(blob) != len) {
		ret = 0;
		drop = 1;
		goto out;
	}
	/* A piece costs the pages it spans: SQLite finds an overflow page of an
	 * incremental-vacuum database through the pointer map instead of
	 * walking the chain from the row. */
	rc = sqlite3_blob_read(blob, buf, (int)n, (int)off);
	if (rc != SQLITE_OK) {
		db_err(e, r->db, rc, "reading a block");
		goto out;
	}
	ret = 1;
out:
	if (rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE && is_corruption(rc))
		mark_corrupt(c, rc);
	sqlite3_blob_close(blob);
	sqlite3_reset(r->lookup);
	conn_put(c, r);
	if (ret == 1 && check) { /* hashed outside the read transaction */
		unsigned char got[32];
		hash_sha256(buf, n, got);
		if (!memcmp(got, key, CACHE_KEY_LEN)) {
			checked_add(c, key, id);
		} else {
			char khex[65];
			hex_encode(key, CACHE_KEY_LEN, khex);
			log_warn(
			        "block cache %s: the cached copy of block sha256 %s does not match "
			        "it (altered on disk); dropped, not served",
			        c->path, khex);
			memset(buf, 0, n);
			atomic_fetch_add(&c->verify_failures, 1);
			ret = 0;
			drop = 1;
		}
	}
	if (drop)
		queue_delete(c, key);
	if (ret == 1) {
		atomic_fetch_add(&c->hits, 1);
		record_touch(c, key);
	} else if (ret != CACHE_UNCHECKED) {
		atomic_fetch_add(&c->misses, 1);
	}
	return ret;
}

int cache_has(struct cache *c, const unsigned char key[CACHE_KEY_LEN])
{
	struct rconn *r;
	int rc;
	if (atomic_load(&c->corrupt) || !(r = conn_get(c, NULL)))
		return 0;
	sqlite3_bind_blob(r->lookup, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	rc = sqlite3_step(r->lookup);
	sqlite3_reset(r->lookup);
	conn_put(c, r);
	return rc == SQLITE_ROW;
}

/* Reserve queue room for len bytes; 0 (and counted as dropped) when the
 * insert cannot be taken now. */
static int queue_reserve(struct cache *c, size_t len)
{
	int ok;
	pthread_mutex_lock(&c->mu);
	ok = len && len <= INT_MAX && len <= c->limit && !c->stop && !atomic_load(&c->corrupt) &&
	     c->qbytes + len <= QUEUE_MAX_BYTES &&
	     (c->degraded_until == 0 || time_mono() >= c->degraded_until);
	if (ok)
		c->qbytes += len;
	pthread_mutex_unlock(&c->mu);
	if (!ok)
		atomic_fetch_add(&c->dropped, 1);
	return ok;
}

static void queue_append(struct cache *c, struct qent *q)
{
	pthread_mutex_lock(&c->mu);
	if (c->qtail)
		c->qtail->next = q;
	else
		c->qhead = q;
	c->qtail = q;
	c->put_seq++;
	pthread_cond_signal(&c->wake);
	pthread_mutex_unlock(&c->mu);
}

static struct qent *qent_new(struct cache *c, const unsigned char *key, size_t len, size_t extra)
{
	struct qent *q = malloc(sizeof(*q) + extra);
	if (!q) {
		pthread_mutex_lock(&c->mu);
		c->qbytes -= len;
		pthread_mutex_unlock(&c->mu);
		atomic_fetch_add(&c->dropped, 1);
		return NULL;
	}
	memcpy(q->key, key, CACHE_KEY_LEN);
	q->len = len;
	q->next = NULL;
	q->release = NULL;
	q->arg = NULL;
	q->id = 0;
	return q;
}

void cache_put(struct cache *c, const unsigned char key[CACHE_KEY_LEN], const void *data,
               size_t len)
{
	struct qent *q;
	if (!queue_reserve(c, len) || !(q = qent_new(c, key, len, len)))
		return;
	memcpy(q->own, data, len);
	q->data = q->own;
	queue_append(c, q);
}

int cache_put_ref(struct cache *c, const unsigned char key[CACHE_KEY_LEN], const void *data,
                  size_t len, void (*release)(void *), void *arg)
{
	struct qent *q;
	if (!queue_reserve(c, len) || !(q = qent_new(c, key, len, 0)))
		return 0;
	q->data = data;
	q->release = release;
	q->arg = arg;
	queue_append(c, q);
	return 1;
}

void cache_flush(struct cache *c)
{
	uint64_t gen;
	pthread_mutex_lock(&c->mu);
	if (!c->writer_started || c->stop) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	gen = ++c->flush_gen;
	c->flush_put_target = c->put_seq;
	c->flush_touch_target = c->touch_seq;
	pthread_cond_signal(&c->wake);
	while (c->flush_done < gen)
		pthread_cond_wait(&c->done, &c->mu);
	pthread_mutex_unlock(&c->mu);
}

/* Hand req to the writer thread (the only connection that writes) and wait
 * for it.  -1 when the cache is closed; else 0 and req->rc is the result. */
static int writer_call(struct cache *c, struct meta_req *req, struct err *e)
{
	struct meta_req **tail;
	pthread_mutex_lock(&c->mu);
	if (!c->writer_started || c->stop) {
		pthread_mutex_unlock(&c->mu);
		return err_set(e, ERR_IO, "block cache: closed");
	}
	for (tail = &c->meta_head; *tail; tail = &(*tail)->next)
		;
	*tail = req;
	pthread_cond_signal(&c->wake);
	while (!req->done)
		pthread_cond_wait(&c->done, &c->mu);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

int cache_meta_put(struct cache *c, const char *name, const void *data, size_t len, struct err *e)
{
	struct meta_req req = {.name = name, .data = len ? data : "", .len = len};
	if (len > INT_MAX)
		return err_set(e, ERR_INVALID, "block cache: metadata %s is too large", name);
	if (writer_call(c, &req, e))
		return -1;
	if (req.rc == SQLITE_OK)
		return 0;
	return err_set(e, ERR_IO, "block cache: caching %s: %s", name, req.msg);
}

uint64_t cache_backlog(struct cache *c)
{
	uint64_t n;
	pthread_mutex_lock(&c->mu);
	n = c->qbytes;
	pthread_mutex_unlock(&c->mu);
	return n;
}

int cache_pins_set(struct cache *c, const char *owner, const unsigned char (*keys)[CACHE_KEY_LEN],
                   size_t n, struct err *e)
{
	struct meta_req req = {.name = owner, .data = keys, .len = n, .pins = 1};
	if (writer_call(c, &req, e))
		return -1;
	if (req.rc == SQLITE_OK)
		return 0;
	return err_set(e, ERR_IO, "block cache: recording %zu pinned blocks: %s", n, req.msg);
}

int cache_meta_get(struct cache *c, const char *name, char **data, size_t *len, struct err *e)
{
	struct rconn *r;
	int rc, ret = -1;
	*data = NULL;
	*len = 0;
	if (!(r = conn_get(c, e)))
		return -1;
	sqlite3_bind_text(r->meta_get, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(r->meta_get);
	if (rc == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(r->meta_get, 0);
		size_t n = (size_t)sqlite3_column_bytes(r->meta_get, 0);
		char *copy = malloc(n + 1);
		if (!copy) {
			err_set(e, ERR_IO, "out of memory");
		} else {
			if (n)
				memcpy(copy, p, n);
			copy[n] = '\0';
			*data = copy;
			*len = n;
			ret = 1;
		}
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	} else {
		db_err(e, r->db, rc, "reading metadata");
		err_prefix(e, "reading cached %s", name);
		if (is_corruption(rc))
			mark_corrupt(c, rc);
	}
	sqlite3_reset(r->meta_get);
	conn_put(c, r);
	return ret;
}

void cache_key_unverified(const char *etag, uint64_t block_index, unsigned char key[CACHE_KEY_LEN])
{
	/* Verified blocks are keyed by SHA-256(content).  Unverified keys use
	 * a different function (SHA-512/256) over a domain-separated,
	 * length-prefixed encoding: equal to a content key only if someone
	 * finds a SHA-256 preimage of a SHA-512/256 output. */
	static const char domain[] = "imgstore cache key v1: unverified block";
	unsigned char hdr[8], idx[8], out[EVP_MAX_MD_SIZE];
	uint64_t n = strlen(etag);
	unsigned int outlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	for (int i = 0; i < 8; i++) {
		hdr[i] = (unsigned char)(n >> (56 - 8 * i));
		idx[i] = (unsigned char)(block_index >> (56 - 8 * i));
	}
	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha512_256(), NULL) ||
	    !EVP_DigestUpdate(ctx, domain, sizeof(domain)) || !EVP_DigestUpdate(ctx, hdr, 8) ||
	    !EVP_DigestUpdate(ctx, etag, n) || !EVP_DigestUpdate(ctx, idx, 8) ||
	    !EVP_DigestFinal_ex(ctx, out, &outlen) || outlen != CACHE_KEY_LEN) {
		/* Out of memory: an all-ones key, which cache_get() simply misses. */
		memset(out, 0xff, CACHE_KEY_LEN);
	}
	EVP_MD_CTX_free(ctx);
	memcpy(key, out, CACHE_KEY_LEN);
}

void cache_get_stats(struct cache *c, struct cache_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->hits = atomic_load(&c->hits);
	out->misses = atomic_load(&c->misses);
	out->inserts = atomic_load(&c->inserts);
	out->evictions = atomic_load(&c->evictions);
	out->dropped = atomic_load(&c->dropped);
	out->verify_failures = atomic_load(&c->verify_failures);
	out->limit_bytes = c->limit;
	pthread_mutex_lock(&c->mu);
	out->bytes = c->bytes;
	pthread_mutex_unlock(&c->mu);
}

void cache_test_set_max_pages(struct cache *c, unsigned pages)
{
	pthread_mutex_lock(&c->mu);
	c->test_max_pages = pages;
	pthread_mutex_unlock(&c->mu);
}

void cache_test_set_full_backoff(struct cache *c, double seconds)
{
	pthread_mutex_lock(&c->mu);
	c->full_backoff = seconds;
	pthread_mutex_unlock(&c->mu);
}

void cache_test_set_touch_interval(struct cache *c, double seconds)
{
	pthread_mutex_lock(&c->mu);
	c->touch_interval = seconds;
	pthread_cond_signal(&c->wake);
	pthread_mutex_unlock(&c->mu);
}

uint64_t cache_test_commits(struct cache *c)
{
	uint64_t n;
	pthread_mutex_lock(&c->mu);
	n = c->commits;
	pthread_mutex_unlock(&c->mu);
	return n;
}
