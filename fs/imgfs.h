/* imgfs internals shared by the fs/ sources: the mount's tree of nodes, the listing
 * state it is built from, and the FUSE operations. */
#ifndef IMGSTORE_FS_IMGFS_H
#define IMGSTORE_FS_IMGFS_H

#define FUSE_USE_VERSION 314

#include "common/err.h"
#include "store/cache/cache.h"
#include "store/reader.h"
#include "store/record.h"
#include "store/s3/s3.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* cache_meta name of the listing state: this prefix, then "<endpoint> <bucket>", so
 * that buckets sharing a cache directory never see each other's listing */
#define IMGFS_STATE_META "imgfs.state.v2 "
#define IMGFS_CTL_DIR    ".imgstore"
#define IMGFS_BYSHA_DIR  "by-sha256"
#define IMGFS_STATS_FILE "stats"
#define IMGFS_METRICS    "metrics"
#define IMGFS_XATTR_PFX  "user.imgstore."
#define IMGFS_TTL        86400.0 /* entry/attr timeout: changes are pushed with notify_inval */
#define IMGFS_FILE_BLKSZ (1024 * 1024)
#define IMGFS_MAX_READ   (1024 * 1024) /* -o max_read */

/* ---- listing state: what the bucket holds (persisted in the cache) ---- */

struct sobj {
	char *key; /* "images/<dest>" */
	uint64_t size;
	char etag[S3_ETAG_MAX];
	time_t mtime;
};

struct srec {
	char *dest;
	char meta_etag[S3_ETAG_MAX]; /* of metadata/<dest>.json */
	char *json;                  /* the record as fetched */
};

struct state {
	struct sobj *imgs; /* sorted by key */
	size_t nimgs;
	struct srec *recs; /* sorted by dest */
	size_t nrecs;
	char *text; /* serialized form (persisted; compared to detect changes) */
};

void state_free(struct state *st);
/* From the cache (1 found, 0 none, -1 unreadable: logged, treated as none). */
/* The listing saved under cache meta `name` (one per endpoint and bucket). */
int state_load(struct cache *c, const char *name, struct state **out);
/* List the bucket; records whose metadata object is unchanged since `prev`
 * are reused, the others fetched (in parallel). */
int state_fetch(const struct s3_config *cfg, struct s3 *s, const struct state *prev,
                struct state **out, struct err *e);
const struct srec *state_find_rec(const struct state *st, const char *dest);

/* ---- the tree ---- */

struct version {
	atomic_int refs;
	uint64_t id; /* unique in this process */
	char *key;
	uint64_t size;
	char etag[S3_ETAG_MAX];
	char meta_etag[S3_ETAG_MAX]; /* "" when unverified */
	time_t mtime;
	int verified;
	char checksum[RECORD_CHECKSUM_MAX]; /* "sha256:<hex>" or "" */
	unsigned char map_digest[32];       /* SHA-256 of the record's size and block map */
	char *source_url;
	char uploaded_at[32];
	struct reader_image *img;
	atomic_int pinned;          /* matches a pin (fs/pins.c) */
	_Atomic long refresh_asked; /* monotonic s: a read found it replaced (ops.c) */
	int whole_logged;           /* the prefetch thread said it is whole */
};

enum nkind { N_DIR, N_FILE, N_STATS }; /* N_STATS: stats or metrics, made at open */

struct node {
	fuse_ino_t ino;
	enum nkind kind;
	char *path; /* "" root, "a/b.qcow2", ".imgstore/stats" */
	const char *name;
	struct node *parent;
	int live;
	int special; /* .imgstore and what is inside it: not from the listing */
	time_t mtime;
	struct version *ver; /* N_FILE */
	struct node **kids;  /* N_DIR: sorted by name */
	size_t nkids, kcap;
	/* page cache: the version whose pages the kernel may hold (fs->pc_mu) */
	uint64_t pc_ver;
	unsigned pc_open;
	struct node *ino_next, *path_next;
	unsigned seen; /* refresh generation */
};

struct imgfs_opts {
	char *mountpoint;
	char *cache_dir;
	uint64_t cache_size;
	long refresh_s;
	long timeout_s;
	int allow_unverified;
	int foreground;
	char **pin_globs; /* --pin, -o pin= */
	size_t npin_globs;
	char *pin_file;         /* --pin-file (absolute) */
	uint64_t prefetch_rate; /* bytes/s; 0: unlimited */
};

struct imgfs {
	struct imgfs_opts o;
	struct s3_config cfg;
	struct cache *cache;
	struct reader *reader;
	struct fuse_session *se;
	int mounted; /* notifications only once the kernel talks to us */
	uid_t uid;
	gid_t gid;
	time_t start_time;

	pthread_rwlock_t lock; /* the tree; taken after pins_lock, never before */
	struct node **by_ino, **by_path;
	size_t cap, nnodes;
	struct node *root, *ctl, *stats, *metrics, *bysha;
	unsigned gen;
	uint64_t next_ver_id;
	_Atomic uint64_t total_bytes;
	atomic_size_t nimages, nunverified;

	pthread_mutex_t pc_mu; /* node page-cache bookkeeping */

	struct state *state;  /* last applied (refresh thread only) */
	char **bysha_refused; /* sorted hex of checksums not published (tree_apply) */
	size_t nbysha_refused;
	atomic_uint_fast64_t refreshes, refresh_errors;
	_Atomic time_t last_refresh;
	atomic_int bucket_ok;
	/* refreshes started and finished (refresh thread), for a read that
	 * must see the listing after a change: imgfs_refresh_wait() */
	pthread_mutex_t refresh_mu;
	pthread_cond_t refresh_cv; /* CLOCK_MONOTONIC */
	uint64_t refresh_started, refresh_done;

	struct pins *pins; /* fs/pins.c */
};

int tree_init(struct imgfs *fs, struct err *e);
/* Ask the refresh thread for a listing now and wait, at most timeout_s, until
 * one that started after this call has been applied.  0 when it has, -1 on
 * timeout (or at shutdown). */
int imgfs_refresh_wait(struct imgfs *fs, long timeout_s);
void tree_free(struct imgfs *fs);
/* Rebuild the tree from a listing state; changes are pushed to the kernel
 * (when mounted) after the lock is released. */
int tree_apply(struct imgfs *fs, const struct state *st, const struct state *prev, int initial,
               struct err *e);
struct node *tree_by_ino(struct imgfs *fs, fuse_ino_t ino);
struct node *tree_child(struct node *dir, const char *name);
struct version *version_ref(struct version *v);
void version_unref(struct version *v);

/* ---- pins (fs/pins.c) ---- */

struct pin_stats {
	uint64_t images;       /* current images matching a pin */
	uint64_t bytes;        /* their sizes, plus their pinned previous versions' */
	uint64_t cached_bytes; /* of bytes: readable without the bucket */
};

/* Read --pin-file (a usage error when it cannot be read); no thread yet. */
int pins_init(struct imgfs *fs, struct err *e);
/* After every refresh (refresh thread) and once after the first listing:
 * re-read the pin file, match the tree, record the pinned blocks in the
 * cache, wake the prefetch thread when the set changed.  Under pins_lock(),
 * which the refresh takes before it changes the tree: pins_get_stats() waits
 * for both, so it never reports the old set's progress for a new version.
 * Lock order: pins_lock, then fs->lock.  So nothing that holds fs->lock may
 * call pins_get_stats (a stats snapshot): a refresh waiting for fs->lock as
 * a writer while holding pins_lock would never get it. */
void pins_update(struct imgfs *fs);
void pins_lock(struct imgfs *fs);
void pins_unlock(struct imgfs *fs);
int pins_start(struct imgfs *fs, struct err *e);
/* Stop and join the prefetch thread, free everything (idempotent). */
void pins_stop(struct imgfs *fs);
void pins_get_stats(struct imgfs *fs, struct pin_stats *out);

/* ---- FUSE ---- */

extern const struct fuse_lowlevel_ops imgfs_ops;
/* After the session: free the handles whose RELEASE never came. */
void imgfs_release_handles(struct imgfs *fs);
/* The stats as a JSON object (NULL when out of memory). */
struct json_t *imgfs_stats_object(struct imgfs *fs);
/* The stats JSON (malloc'd, with a trailing newline). */
char *imgfs_stats_json(struct imgfs *fs, size_t *len);
/* The stats in the Prometheus text format (malloc'd), fs/metrics.c. */
char *imgfs_metrics_text(struct imgfs *fs, size_t *len);

#endif
