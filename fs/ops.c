/* The FUSE low-level operations of imgfs: a read-only tree; every write
 * fails with EROFS.  Reads go through the verified reader (store/reader.h).
 *
 * Page cache: the content of a version never changes, so handles keep the
 * kernel's page cache (FOPEN_KEEP_CACHE) and attributes are cached for long.
 * Per inode the kernel keeps one page cache, but after a refresh two
 * versions may be open at once; so the pages of an inode belong to one
 * version at a time (node->pc_ver): a handle of another version opened while
 * page-cache handles of the first are still open uses direct I/O. */
#include "fs/imgfs.h"

#include "common/log.h"
#include "common/timefmt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#ifndef SEEK_DATA
#define SEEK_DATA 3
#define SEEK_HOLE 4
#endif

#define FS(req) ((struct imgfs *)fuse_req_userdata(req))

/* Open handles are also on a list: the kernel drops RELEASEs that are
 * still queued at unmount, and what they held is freed on the way out. */
struct hlink {
	struct hlink *prev, *next;
	int is_dir;
};

static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hlink handles = {&handles, &handles, 0};

static void handle_add(struct hlink *l, int is_dir)
{
	l->is_dir = is_dir;
	pthread_mutex_lock(&handles_mu);
	l->next = handles.next;
	l->prev = &handles;
	handles.next->prev = l;
	handles.next = l;
	pthread_mutex_unlock(&handles_mu);
}

static void handle_del(struct hlink *l)
{
	pthread_mutex_lock(&handles_mu);
	l->prev->next = l->next;
	l->next->prev = l->prev;
	pthread_mutex_unlock(&handles_mu);
}

struct fh {
	struct hlink link; /* first */
	enum nkind kind;
	struct node *node;
	struct version *ver;      /* N_FILE */
	struct reader_stream *st; /* N_FILE */
	int pagecache;            /* counted in node->pc_open */
	char *data;               /* N_STATS: the snapshot */
	size_t len;
};

/* What fill_attr leaves to the caller for a stats node: its size, which is
 * the length of a fresh snapshot.  The snapshot takes pins_lock, and the
 * refresh holds pins_lock while it waits for fs->lock as a writer (lock
 * order: pins_lock, then fs->lock); so it is made after fs->lock is
 * released (stats_size), never under it. */
enum stats_kind { NOT_STATS, STATS_JSON, STATS_METRICS };

struct dent {
	char *name;
	struct stat st;
	enum stats_kind stats; /* st_size is still to be filled */
};

struct dh {
	struct hlink link; /* first */
	struct dent *v;
	size_t n;
};

/* ---- stats ---- */

json_t *imgfs_stats_object(struct imgfs *fs)
{
	struct reader_stats rs;
	struct cache_stats cs = {0};
	struct pin_stats ps;
	json_t *o = json_object();
	char when[32] = "";
	time_t last = atomic_load(&fs->last_refresh);

	if (!o)
		return NULL;
	reader_get_stats(fs->reader, &rs);
	pins_get_stats(fs, &ps);
	if (fs->cache)
		cache_get_stats(fs->cache, &cs);
	if (last)
		time_format_rfc3339(last, when);
#define NUM(k, v) json_object_set_new(o, k, json_integer((json_int_t)(v)))
	NUM("images", atomic_load(&fs->nimages));
	NUM("unverified_images", atomic_load(&fs->nunverified));
	NUM("image_bytes", atomic_load(&fs->total_bytes));
	NUM("cache_hits", rs.cache_hits);
	NUM("cache_misses", rs.cache_misses);
	NUM("bytes_fetched", rs.bytes_fetched);
	NUM("verify_failures", rs.verify_failures);
	NUM("cache_bytes", cs.bytes);
	NUM("cache_limit_bytes", fs->cache ? cs.limit_bytes : fs->o.cache_size);
	NUM("cache_inserts", cs.inserts);
	NUM("cache_evictions", cs.evictions);
	NUM("cache_dropped", cs.dropped);
	NUM("cache_verify_failures", cs.verify_failures);
	NUM("memory_hits", rs.mem_hits);
	NUM("memory_bytes", rs.mem_bytes);
	NUM("memory_limit_bytes", rs.mem_limit_bytes);
	NUM("memory_peak_bytes", rs.mem_peak_bytes);
	NUM("zero_blocks", rs.zero_blocks);
	NUM("coalesced_reads", rs.coalesced);
	NUM("readahead_blocks", rs.readahead_blocks);
	NUM("fetch_errors", rs.fetch_errors);
	NUM("gets", rs.gets);
	NUM("requests", rs.requests);
	NUM("retries", rs.retries);
	NUM("refreshes", atomic_load(&fs->refreshes));
	NUM("refresh_errors", atomic_load(&fs->refresh_errors));
	NUM("pinned_images", ps.images);
	NUM("pinned_bytes", ps.bytes);
	NUM("pinned_cached_bytes", ps.cached_bytes);
#undef NUM
	json_object_set_new(o, "last_refresh", last ? json_string(when) : json_null());
	json_object_set_new(o, "bucket_reachable",
	                    json_boolean(atomic_load(&fs->bucket_ok) && !rs.bucket_down));
	return o;
}

char *imgfs_stats_json(struct imgfs *fs, size_t *len)
{
	json_t *o = imgfs_stats_object(fs);
	char *text, *out = NULL;

	if (!o)
		return NULL;
	text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (text) {
		size_t n = strlen(text);
		if ((out = malloc(n + 2))) {
			memcpy(out, text, n);
			out[n] = '\n';
			out[n + 1] = '\0';
			*len = n + 1;
		}
		free(text);
	}
	return out;
}

/* The content of a stats or metrics node, made afresh (malloc'd). */
static char *snapshot(struct imgfs *fs, const struct node *n, size_t *len)
{
	return n == fs->metrics ? imgfs_metrics_text(fs, len) : imgfs_stats_json(fs, len);
}

/* ---- attributes ---- */

/* n's attributes, under fs->lock; a stats node's size is left to
 * stats_size, with the kind returned */
static enum stats_kind fill_attr(struct imgfs *fs, const struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_mtime = st->st_ctime = st->st_atime = n->mtime;
	switch (n->kind) {
	case N_DIR:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		st->st_size = 4096;
		st->st_blksize = 4096;
		break;
	case N_FILE:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = n->ver ? (off_t)n->ver->size : 0;
		st->st_blksize = IMGFS_FILE_BLKSZ;
		st->st_blocks = (st->st_size + 511) / 512;
		break;
	case N_STATS:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_blksize = 4096;
		st->st_mtime = st->st_ctime = st->st_atime = time(NULL);
		return n == fs->metrics ? STATS_METRICS : STATS_JSON;
	}
	return NOT_STATS;
}

/* The size of a stats node, with fs->lock not held (see stats_kind) */
static void stats_size(struct imgfs *fs, enum stats_kind k, struct stat *st)
{
	size_t len = 0;
	char *s = NULL;
	if (k == STATS_METRICS)
		s = imgfs_metrics_text(fs, &len);
	else if (k == STATS_JSON)
		s = imgfs_stats_json(fs, &len);
	free(s);
	if (k != NOT_STATS)
		st->st_size = (off_t)len;
}

static double attr_ttl(const struct node *n)
{
	return n->kind == N_STATS ? 0.0 : IMGFS_TTL;
}

static enum stats_kind fill_entry(struct imgfs *fs, const struct node *n,
                                  struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = 1;
	e->attr_timeout = attr_ttl(n);
	e->entry_timeout = IMGFS_TTL;
	return fill_attr(fs, n, &e->attr);
}

/* ---- lifecycle ---- */

static void op_init(void *ud, struct fuse_conn_info *conn)
{
	struct imgfs *fs = ud;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS_AUTO; /* ls -l: attributes in one go */
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;  /* versions are tracked here */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* NFS export (knfsd, NFS-Ganesha): a file handle names the inode number,
	 * and once the kernel has forgotten that inode it asks us for "." of
	 * it (and ".." of a directory) instead of failing with ESTALE.  Inode
	 * numbers are hashes of the path, so handles hold across refreshes and
	 * restarts. */
	if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
		conn->want |= FUSE_CAP_EXPORT_SUPPORT;
	conn->max_readahead = conn->capable ? UINT32_MAX : conn->max_readahead;
	conn->max_read = IMGFS_MAX_READ; /* must equal -o max_read */
	conn->max_background = 16;
	conn->congestion_threshold = 12;
	fs->mounted = 1;
}

static void op_destroy(void *ud)
{
	struct imgfs *fs = ud;
	fs->mounted = 0;
}

/* ---- lookups ---- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct imgfs *fs = FS(req);
	struct fuse_entry_param e;
	struct node *p, *n;
	enum stats_kind sk = NOT_STATS;
	int err = 0;

	pthread_rwlock_rdlock(&fs->lock);
	p = tree_by_ino(fs, parent);
	if (!p || !p->live)
		err = ENOENT;
	else if (!strcmp(name, "."))
		sk = fill_entry(fs, p, &e); /* any kind: an NFS file handle of a forgotten inode */
	else if (p->kind != N_DIR)
		err = ENOTDIR;
	else if (!strcmp(name, ".."))
		sk = fill_entry(fs, p->parent ? p->parent : p, &e); /* reconnecting a dir handle */
	else if (!(n = tree_child(p, name)))
		err = ENOENT;
	else
		sk = fill_entry(fs, n, &e);
	pthread_rwlock_unlock(&fs->lock);
	if (!err)
		stats_size(fs, sk, &e.attr);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req); /* nodes live as long as the mount */
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imgfs *fs = FS(req);
	struct stat st;
	struct node *n;
	enum stats_kind sk = NOT_STATS;
	double ttl = 0;
	(void)fi;
	pthread_rwlock_rdlock(&fs->lock);
	n = tree_by_ino(fs, ino);
	if (n) {
		sk = fill_attr(fs, n, &st);
		ttl = attr_ttl(n);
	}
	pthread_rwlock_unlock(&fs->lock);
	if (n)
		stats_size(fs, sk, &st);
	if (!n)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_attr(req, &st, ttl);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	fuse_reply_err(req, EINVAL);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct imgfs *fs = FS(req);
	struct node *n;
	int err = 0;
	pthread_rwlock_rdlock(&fs->lock);
	n = tree_by_ino(fs, ino);
	if (!n)
		err = ENOENT;
	else if (mask & W_OK)
		err = EROFS;
	else if ((mask & X_OK) && n->kind != N_DIR)
		err = EACCES;
	pthread_rwlock_unlock(&fs->lock);
	fuse_reply_err(req, err);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct imgfs *fs = FS(req);
	struct statvfs sv;
	(void)ino;
	memset(&sv, 0, sizeof(sv));
	pthread_rwlock_rdlock(&fs->lock);
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = (fsblkcnt_t)((atomic_load(&fs->total_bytes) + 4095) / 4096);
	sv.f_files = (fsfilcnt_t)fs->nnodes;
	pthread_rwlock_unlock(&fs->lock);
	sv.f_namemax = 255;
	sv.f_flag = ST_RDONLY;
	fuse_reply_statfs(req, &sv);
}

/* ---- files ---- */

static void fh_free(struct imgfs *fs, struct fh *h)
{
	if (h->pagecache) {
		pthread_mutex_lock(&fs->pc_mu);
		h->node->pc_open--;
		pthread_mutex_unlock(&fs->pc_mu);
	}
	reader_stream_free(h->st);
	version_unref(h->ver);
	free(h->data);
	free(h);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imgfs *fs = FS(req);
	struct fh *h;
	struct node *n;
	int err = 0;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_CREAT | O_APPEND))) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!(h = calloc(1, sizeof(*h)))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_rwlock_rdlock(&fs->lock);
	n = tree_by_ino(fs, ino);
	if (!n || !n->live)
		err = ENOENT;
	else if (n->kind == N_DIR)
		err = EISDIR;
	else if (n->kind == N_FILE && !n->ver)
		err = ENOENT;
	if (!err) {
		h->kind = n->kind;
		h->node = n;
		h->ver = version_ref(n->ver);
	}
	pthread_rwlock_unlock(&fs->lock);
	if (err)
		goto fail;

	if (h->kind == N_STATS) {
		if (!(h->data = snapshot(fs, n, &h->len))) {
			err = ENOMEM;
			goto fail;
		}
		fi->direct_io = 1;
		fi->nonseekable = 0;
	} else {
		if (!(h->st = reader_stream_new())) {
			err = ENOMEM;
			goto fail;
		}
		pthread_mutex_lock(&fs->pc_mu);
		if (n->pc_open && n->pc_ver != h->ver->id) {
			fi->direct_io = 1; /* the page cache holds another version */
		} else {
			fi->keep_cache = n->pc_ver == h->ver->id;
			n->pc_ver = h->ver->id;
			n->pc_open++;
			h->pagecache = 1;
		}
		pthread_mutex_unlock(&fs->pc_mu);
	}
	fi->noflush = 1;
	fi->fh = (uint64_t)(uintptr_t)h;
	handle_add(&h->link, 0);
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* interrupted: the kernel will not release it */
		handle_del(&h->link);
		fh_free(fs, h);
	}
	return;
fail:
	version_unref(h->ver);
	reader_stream_free(h->st);
	free(h);
	fuse_reply_err(req, err);
}

/* Every failure of a read is EIO: a checksum mismatch, a changed object, an
 * unreachable bucket (after the retry budget). */
static int errno_of(const struct err *e)
{
	(void)e;
	return EIO;
}

/* The object an open file reads was replaced in the bucket (412).  When the
 * listing now holds the same bytes elsewhere -- by-sha256/<hex>, whose bytes
 * labctl moved to versions/<hex> with a server-side copy before replacing
 * them -- the read goes on from there: a VM or an overlay standing on a
 * base must not see EIO because CI published a new one.  Same bytes means
 * the same checksum and the same block map, both verified; every block is
 * still checked against that map.  NULL when there is no such version (yet:
 * a later refresh may publish it). */
static struct version *same_bytes_now(struct imgfs *fs, const struct fh *h)
{
	const char *hex = strchr(h->ver->checksum, ':');
	struct version *v = NULL, *cur = NULL;
	struct node *n;
	if (!h->ver->verified || !hex || strncmp(h->ver->checksum, "sha256:", 7))
		return NULL;
	pthread_rwlock_rdlock(&fs->lock);
	n = fs->bysha ? tree_child(fs->bysha, hex + 1) : NULL;
	if (n && n->live && n->kind == N_FILE)
		cur = n->ver;
	if (cur && cur != h->ver && cur->verified && cur->size == h->ver->size &&
	    !strcmp(cur->checksum, h->ver->checksum) &&
	    !memcmp(cur->map_digest, h->ver->map_digest, sizeof(cur->map_digest)))
		v = version_ref(cur);
	pthread_rwlock_unlock(&fs->lock);
	return v;
}

static int refresh_due(struct version *v)
{
	long now = (long)time_mono(), last = atomic_load(&v->refresh_asked);
	return now - last >= 5 && atomic_compare_exchange_strong(&v->refresh_asked, &last, now);
}

/* reader_read_iov on the open version, and once more on the same bytes'
 * new home when that object was replaced.  The handle keeps its version
 * (fuse may run reads of one handle in parallel): *moved holds the
 * reference the caller drops after the reply. */
static int read_following(struct imgfs *fs, struct fh *h, uint64_t off, size_t size,
                          struct reader_iov *v, struct version **moved, struct err *e)
{
	struct version *nv;
	struct reader_stream *st;
	int rc;
	*moved = NULL;
	if (!reader_read_iov(h->ver->img, h->st, off, size, NULL, v, e))
		return 0;
	if (e->code != ERR_PRECONDITION)
		return -1;
	/* The listing may not show the new home yet: a sync replaced the image
	 * after the last refresh.  Ask for one now, at most every few seconds
	 * per opened version (an image replaced without keeping its bytes then
	 * fails fast, and a listing that lags is asked again). */
	if (!(nv = same_bytes_now(fs, h)) && refresh_due(h->ver)) {
		long wait_s = fs->o.timeout_s < 30 ? fs->o.timeout_s : 30;
		log_info("%s changed in the bucket; refreshing the listing to find where its "
		         "bytes went",
		         h->ver->key);
		if (!imgfs_refresh_wait(fs, wait_s))
			nv = same_bytes_now(fs, h);
	}
	if (!nv)
		return -1;
	if (!(st = reader_stream_new())) {
		version_unref(nv);
		return -1;
	}
	log_debug("read %s at %llu: the object was replaced; reading the same bytes from %s",
	          h->ver->key, (unsigned long long)off, nv->key);
	err_clear(e);
	rc = reader_read_iov(nv->img, st, off, size, NULL, v, e);
	reader_stream_free(st);
	if (rc)
		version_unref(nv);
	else
		*moved = nv;
	return rc;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	struct fh *h = (struct fh *)(uintptr_t)fi->fh;
	struct version *moved = NULL;
	struct err e = {0};
	struct reader_iov v;
	char *buf;
	(void)ino;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (h->kind == N_STATS) {
		/* Reply from a copy: once the kernel has the bytes, the reader may
		 * close and RELEASE (another thread) free h before writev returns. */
		if ((size_t)off >= h->len)
			size = 0;
		else if (size > h->len - (size_t)off)
			size = h->len - (size_t)off;
		if (!(buf = malloc(size ? size : 1))) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(buf, h->data + off, size);
		fuse_reply_buf(req, buf, size);
		free(buf);
	} else if (read_following(FS(req), h, (uint64_t)off, size, &v, &moved, &e)) {
		log_debug("read %s at %lld: %s", h->ver->key, (long long)off, e.msg);
		fuse_reply_err(req, errno_of(&e));
	} else {
		/* Straight from the reader's verified blocks, which stay held until
		 * the kernel has copied them (fuse_reply_iov returns after writev),
		 * and what SQLite filled in a buffer the reader lent: no buffer
		 * per request here, whose 1 MiB a warm read would touch on top
		 * of the reader's idle ones (peak RSS, tests/bench/cold.sh).
		 * Not fuse_reply_data: without splice, libfuse 3.14 copies a
		 * bufvec of more than one buffer into a fresh one first. */
		fuse_reply_iov(req, v.iov, v.count);
		reader_iov_release(&v);
		if (moved)
			version_unref(moved);
	}
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imgfs *fs = FS(req);
	struct fh *h = (struct fh *)(uintptr_t)fi->fh;
	(void)ino;
	handle_del(&h->link);
	fh_free(fs, h);
	fuse_reply_err(req, 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, 0); /* nothing is ever dirty */
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
	struct fh *h = (struct fh *)(uintptr_t)fi->fh;
	uint64_t out;
	(void)ino;
	if (h->kind != N_FILE || (whence != SEEK_DATA && whence != SEEK_HOLE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (off < 0 || reader_image_seek(h->ver->img, (uint64_t)off, whence == SEEK_HOLE, &out)) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	fuse_reply_lseek(req, (off_t)out);
}

/* ---- directories ---- */

static int dh_add(struct dh *d, size_t *cap, const char *name, const struct stat *st,
                  enum stats_kind stats)
{
	if (d->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct dent *nv = realloc(d->v, nc * sizeof(*nv));
		if (!nv)
			return -1;
		d->v = nv;
		*cap = nc;
	}
	if (!(d->v[d->n].name = strdup(name)))
		return -1;
	d->v[d->n].st = *st;
	d->v[d->n].stats = stats;
	d->n++;
	return 0;
}

static void dh_free(struct dh *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i].name);
	free(d->v);
	free(d);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imgfs *fs = FS(req);
	struct dh *d = calloc(1, sizeof(*d));
	struct node *n;
	size_t cap = 0;
	int err = 0;
	struct stat st;

	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_rwlock_rdlock(&fs->lock);
	n = tree_by_ino(fs, ino);
	if (!n || !n->live) {
		err = ENOENT;
	} else if (n->kind != N_DIR) {
		err = ENOTDIR;
	} else {
		enum stats_kind sk = fill_attr(fs, n, &st);
		err = dh_add(d, &cap, ".", &st, sk) ? ENOMEM : 0;
		if (!err) {
			sk = fill_attr(fs, n->parent ? n->parent : n, &st);
			err = dh_add(d, &cap, "..", &st, sk) ? ENOMEM : 0;
		}
		for (size_t i = 0; !err && i < n->nkids; i++) {
			sk = fill_attr(fs, n->kids[i], &st);
			err = dh_add(d, &cap, n->kids[i]->name, &st, sk) ? ENOMEM : 0;
		}
	}
	pthread_rwlock_unlock(&fs->lock);
	for (size_t i = 0; !err && i < d->n; i++)
		stats_size(fs, d->v[i].stats, &d->v[i].st);
	if (err) {
		dh_free(d);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	handle_add(&d->link, 1);
	if (fuse_reply_open(req, fi) == -ENOENT) {
		handle_del(&d->link);
		dh_free(d);
	}
}

static void do_readdir(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi, int plus)
{
	struct imgfs *fs = FS(req);
	struct dh *d = (struct dh *)(uintptr_t)fi->fh;
	char *buf = malloc(size ? size : 1);
	size_t pos = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = off < 0 ? 0 : (size_t)off; i < d->n; i++) {
		const struct dent *de = &d->v[i];
		size_t need;
		if (plus) {
			struct fuse_entry_param e;
			int dot = !strcmp(de->name, ".") || !strcmp(de->name, "..");
			memset(&e, 0, sizeof(e));
			e.attr = de->st;
			if (!dot) {
				e.ino = de->st.st_ino;
				e.generation = 1;
				e.attr_timeout = S_ISREG(de->st.st_mode) &&
				                                 (de->st.st_ino == fs->stats->ino ||
				                                  de->st.st_ino == fs->metrics->ino)
				                         ? 0.0
				                         : IMGFS_TTL;
				e.entry_timeout = IMGFS_TTL;
			}
			need = fuse_add_direntry_plus(req, buf + pos, size - pos, de->name, &e,
			                              (off_t)(i + 1));
		} else {
			need = fuse_add_direntry(req, buf + pos, size - pos, de->name, &de->st,
			                         (off_t)(i + 1));
		}
		if (need > size - pos)
			break;
		pos += need;
	}
	fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
	(void)ino;
	do_readdir(req, size, off, fi, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
	(void)ino;
	do_readdir(req, size, off, fi, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dh *d = (struct dh *)(uintptr_t)fi->fh;
	(void)ino;
	handle_del(&d->link);
	dh_free(d);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, 0);
}

void imgfs_release_handles(struct imgfs *fs)
{
	pthread_mutex_lock(&handles_mu);
	while (handles.next != &handles) {
		struct hlink *l = handles.next;
		l->prev->next = l->next;
		l->next->prev = l->prev;
		if (l->is_dir)
			dh_free((struct dh *)l);
		else
			fh_free(fs, (struct fh *)l);
	}
	pthread_mutex_unlock(&handles_mu);
}

/* ---- extended attributes ---- */

static const char *const xattr_names[] = {
        IMGFS_XATTR_PFX "checksum",     IMGFS_XATTR_PFX "source_url", IMGFS_XATTR_PFX "uploaded_at",
        IMGFS_XATTR_PFX "cached_bytes", IMGFS_XATTR_PFX "pinned",
};

/* The value of xattr `name` of version v into out (malloc'd); 0, or ENODATA. */
static int xattr_value(struct version *v, const char *name, char **out)
{
	char num[32];
	const char *val = NULL;
	if (!strcmp(name, xattr_names[0]))
		val = v->checksum[0] ? v->checksum : NULL;
	else if (!strcmp(name, xattr_names[1]))
		val = v->source_url;
	else if (!strcmp(name, xattr_names[2]))
		val = v->uploaded_at[0] ? v->uploaded_at : NULL;
	else if (!strcmp(name, xattr_names[3])) {
		snprintf(num, sizeof(num), "%llu",
		         (unsigned long long)reader_image_cached_bytes(v->img));
		val = num;
	} else if (!strcmp(name, xattr_names[4])) {
		val = atomic_load(&v->pinned) ? "1" : "0";
	}
	if (!val)
		return ENODATA;
	*out = strdup(val);
	return *out ? 0 : ENOMEM;
}

static struct version *file_version(struct imgfs *fs, fuse_ino_t ino, int *err)
{
	struct node *n;
	struct version *v = NULL;
	pthread_rwlock_rdlock(&fs->lock);
	n = tree_by_ino(fs, ino);
	*err = !n ? ENOENT : 0;
	if (n && n->kind == N_FILE)
		v = version_ref(n->ver);
	pthread_rwlock_unlock(&fs->lock);
	return v;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct imgfs *fs = FS(req);
	int err;
	char *val = NULL;
	struct version *v = file_version(fs, ino, &err);
	size_t len;

	if (!v) {
		fuse_reply_err(req, err ? err : ENODATA);
		return;
	}
	err = xattr_value(v, name, &val);
	version_unref(v);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	len = strlen(val);
	if (!size)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
	free(val);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct imgfs *fs = FS(req);
	int err;
	struct version *v = file_version(fs, ino, &err);
	char list[256];
	size_t len = 0;

	if (!v && err) {
		fuse_reply_err(req, err);
		return;
	}
	for (size_t i = 0; v && i < sizeof(xattr_names) / sizeof(xattr_names[0]); i++) {
		int present = i == 3 || i == 4 || (i == 0 && v->checksum[0]) ||
		              (i == 1 && v->source_url) || (i == 2 && v->uploaded_at[0]);
		size_t l = strlen(xattr_names[i]) + 1;
		if (!present)
			continue;
		memcpy(list + len, xattr_names[i], l);
		len += l;
	}
	version_unref(v);
	if (!size)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, list, len);
}

/* ---- writes: all EROFS ---- */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
	(void)ino;
	(void)attr;
	(void)to_set;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, EROFS);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EROFS);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
	(void)parent;
	(void)name;
	(void)newparent;
	(void)newname;
	(void)flags;
	fuse_reply_err(req, EROFS);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EROFS);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
	(void)ino;
	(void)buf;
	(void)size;
	(void)off;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
	(void)ino;
	(void)name;
	(void)value;
	(void)size;
	(void)flags;
	fuse_reply_err(req, EROFS);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
	(void)ino;
	(void)mode;
	(void)offset;
	(void)length;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags)
{
	(void)ino_in;
	(void)off_in;
	(void)fi_in;
	(void)ino_out;
	(void)off_out;
	(void)fi_out;
	(void)len;
	(void)flags;
	fuse_reply_err(req, EROFS);
}

/* Not implemented on purpose: getlk/setlk/flock (the kernel then keeps
 * POSIX and BSD locks locally, which is what QEMU's image locking needs on a
 * read-only image), ioctl, poll, bmap. */
const struct fuse_lowlevel_ops imgfs_ops = {
        .init = op_init,
        .destroy = op_destroy,
        .lookup = op_lookup,
        .forget = op_forget,
        .forget_multi = op_forget_multi,
        .getattr = op_getattr,
        .setattr = op_setattr,
        .readlink = op_readlink,
        .mknod = op_mknod,
        .mkdir = op_mkdir,
        .unlink = op_unlink,
        .rmdir = op_unlink,
        .symlink = op_symlink,
        .rename = op_rename,
        .link = op_link,
        .open = op_open,
        .read = op_read,
        .write = op_write,
        .flush = op_flush,
        .release = op_release,
        .fsync = op_fsync,
        .opendir = op_opendir,
        .readdir = op_readdir,
        .readdirplus = op_readdirplus,
        .releasedir = op_releasedir,
        .fsyncdir = op_fsyncdir,
        .statfs = op_statfs,
        .setxattr = op_setxattr,
        .getxattr = op_getxattr,
        .listxattr = op_listxattr,
        .removexattr = op_removexattr,
        .access = op_access,
        .create = op_create,
        .fallocate = op_fallocate,
        .copy_file_range = op_copy_file_range,
        .lseek = op_lseek,
};
