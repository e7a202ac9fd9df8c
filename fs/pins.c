/* Pinned images (docs/design.md "Pins"): every image whose destination
 * matches a --pin glob or a line of --pin-file is kept whole in the cache.
 *
 * - The refresh thread (pins_update, after every listing) matches the tree,
 *   records the block keys of the pinned versions in the cache (the pins
 *   table, which eviction skips) and hands the list to the prefetch thread
 *   when it changed: a new version, a new pin, a new previous version.
 * - The prefetch thread fetches the blocks that are not in the cache through
 *   the verified reader (reader_prefetch: the demand path, with its checks
 *   against the record and its cache inserts), current versions first, then
 *   the previous versions of pinned images.  It starts a GET only when no
 *   demand read is in flight and none ended in the last QUIET_S, at most
 *   --prefetch-rate bytes a second, and only while the cache writer keeps up,
 *   so that its blocks are not dropped.
 * - A pass that failed (bucket unreachable) is tried again after RETRY_S. */
#include "fs/imgfs.h"

#include "common/hash.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/size.h"
#include "common/timefmt.h"

#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETRY_S       30.0
#define QUIET_S       0.05 /* demand reads quiet this long before a prefetch GET */
#define NAP_S         0.01
#define RUN_MAX_BYTES (4u << 20) /* bytes per prefetch GET */
#define BACKLOG_MAX   (16u << 20)
/* GETs in flight without a rate: the changed blocks of a new version are
 * scattered, one short GET each, so the latency of a request counts more
 * than the bandwidth: the refresh of tests/bench/pin.sh (51 scattered
 * blocks of a 1 GiB image) took 2.2 s with 4, 4.2 s with one GET at a time
 * (2 cores, load average 10-15).  At most 4 x RUN_MAX_BYTES of the reader's
 * 24 MiB of block memory (the default). */
#define WORKERS  4
#define RECHECKS 3 /* passes over one image whose blocks the writer dropped */

struct pinned {
	struct version *v;
	char *name; /* for the log: the destination, or what a previous version was */
};

struct pins {
	/* refresh thread only */
	char **file_globs;
	size_t nfile_globs;
	int file_failed;
	char *owner; /* of the pins in the cache: endpoint and bucket */
	unsigned char digest[32];
	int have_digest;
	uint64_t logged_excess;

	pthread_mutex_t upd_mu; /* pins_lock: the set and its stats are consistent */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pinned *list; /* the current set, current versions first */
	size_t n;
	unsigned gen;
	int stop;
	pthread_t th;
	int started;

	double tb; /* token bucket (under mu): when the next GET may start */
	atomic_uint_fast64_t images, bytes, cached;
	atomic_int failing;  /* the last pass failed: its successors log at debug level */
	atomic_int overfull; /* the pins do not fit: what is dropped stays dropped */
};

struct key_len {
	unsigned char key[CACHE_KEY_LEN];
	uint32_t len;
};

static void strings_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void list_free(struct pinned *l, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		version_unref(l[i].v);
		free(l[i].name);
	}
	free(l);
}

/* One glob a line; blank lines and lines starting with # are skipped,
 * leading and trailing blanks are not part of the glob. */
static int read_globs(const char *path, char ***out, size_t *nout, struct err *e)
{
	FILE *f = fopen(path, "re");
	char *line = NULL, **v = NULL;
	size_t cap = 0, n = 0, vcap = 0;
	int rc = -1;

	if (!f)
		return err_errno(e, "reading the pin file %s", path);
	while (getline(&line, &cap, f) >= 0) {
		char *s = line, *end;
		while (*s == ' ' || *s == '\t')
			s++;
		end = s + strlen(s);
		while (end > s && strchr(" \t\r\n", end[-1]))
			*--end = '\0';
		if (!*s || *s == '#')
			continue;
		if (n == vcap) {
			size_t nc = vcap ? vcap * 2 : 8;
			char **nv = realloc(v, nc * sizeof(*v));
			if (!nv)
				goto oom;
			v = nv;
			vcap = nc;
		}
		if (!(v[n] = strdup(s)))
			goto oom;
		n++;
	}
	if (ferror(f)) {
		err_errno(e, "reading the pin file %s", path);
		goto out;
	}
	*out = v;
	*nout = n;
	v = NULL;
	n = 0;
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	strings_free(v, n);
	free(line);
	fclose(f);
	return rc;
}

/* A glob matches the destination as the mount shows it ("a/b.raw"; a
 * leading "/" in the glob is allowed).  No FNM_PATHNAME: a star matches
 * slashes too, so "debian/" followed by a star pins everything below debian/. */
static int glob_match(const char *glob, const char *path)
{
	while (*glob == '/')
		glob++;
	return fnmatch(glob, path, 0) == 0;
}

static int is_pinned_path(const struct imgfs *fs, const struct pins *p, const char *path)
{
	for (size_t i = 0; i < fs->o.npin_globs; i++)
		if (glob_match(fs->o.pin_globs[i], path))
			return 1;
	for (size_t i = 0; i < p->nfile_globs; i++)
		if (glob_match(p->file_globs[i], path))
			return 1;
	return 0;
}

int pins_init(struct imgfs *fs, struct err *e)
{
	struct pins *p = calloc(1, sizeof(*p));
	pthread_condattr_t ca;
	if (!p)
		return err_set(e, ERR_IO, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	pthread_mutex_init(&p->upd_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	fs->pins = p;
	if (asprintf(&p->owner, "%s %s", fs->cfg.endpoint, fs->cfg.bucket) < 0) {
		p->owner = NULL;
		return err_set(e, ERR_IO, "out of memory");
	}
	if (fs->o.pin_file && read_globs(fs->o.pin_file, &p->file_globs, &p->nfile_globs, e)) {
		e->code = ERR_USAGE;
		return err_prefix(e, "--pin-file");
	}
	return 0;
}

/* ---- the pinned set (refresh thread) ---- */

struct plist {
	struct pinned *v;
	size_t n, cap;
};

static int plist_add(struct plist *l, struct version *v, char *name)
{
	if (!name)
		return -1;
	for (size_t i = 0; i < l->n; i++) {
		if (l->v[i].v == v) {
			free(name); /* by-sha256 of a current image */
			return 0;
		}
	}
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 16;
		struct pinned *nv = realloc(l->v, nc * sizeof(*nv));
		if (!nv) {
			free(name);
			return -1;
		}
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n].v = version_ref(v);
	l->v[l->n].name = name;
	l->n++;
	return 0;
}

static int walk(struct imgfs *fs, struct pins *p, const struct node *d, struct plist *l)
{
	for (size_t i = 0; i < d->nkids; i++) {
		const struct node *k = d->kids[i];
		if (k->special || !k->live)
			continue;
		if (k->kind == N_DIR && walk(fs, p, k, l))
			return -1;
		if (k->kind == N_FILE && k->ver && is_pinned_path(fs, p, k->path) &&
		    plist_add(l, k->ver, strdup(k->path)))
			return -1;
	}
	return 0;
}

/* Previous versions (versions/<hex>, published as by-sha256/<hex>) whose
 * record names a pinned destination.  Under fs->lock (read). */
static int previous_versions(struct imgfs *fs, struct pins *p, struct plist *l)
{
	const struct state *st = fs->state;
	size_t plen = strlen(RECORD_VERSIONS_PREFIX);
	if (!st || !fs->bysha)
		return 0;
	for (size_t i = 0; i < st->nrecs; i++) {
		const struct srec *sr = &st->recs[i];
		const struct node *n;
		const char *dest;
		json_t *j;
		char *name = NULL;
		int rc = 0;
		if (strncmp(sr->dest, RECORD_VERSIONS_PREFIX, plen))
			continue;
		n = tree_child(fs->bysha, sr->dest + plen);
		if (!n || n->kind != N_FILE || !n->ver || !n->live)
			continue;
		if (!(j = json_loads(sr->json, 0, NULL)))
			continue;
		dest = json_string_value(json_object_get(j, "destination"));
		if (dest && is_pinned_path(fs, p, dest)) {
			if (asprintf(&name, "%s/%s/%s (a previous version of %s)", IMGFS_CTL_DIR,
			             IMGFS_BYSHA_DIR, sr->dest + plen, dest) < 0)
				name = NULL;
			rc = plist_add(l, n->ver, name);
		}
		json_decref(j);
		if (rc)
			return -1;
	}
	return 0;
}

static int cmp_key_len(const void *a, const void *b)
{
	return memcmp(a, b, CACHE_KEY_LEN);
}

/* The distinct keys of the pinned blocks that need a cache row (not the
 * all-zero ones), sorted; *need their bytes.  NULL when out of memory. */
static unsigned char (*pinned_keys(const struct plist *l, size_t *nkeys,
                                   uint64_t *need))[CACHE_KEY_LEN]
{
	struct key_len *kl = NULL;
	unsigned char(*keys)[CACHE_KEY_LEN];
	size_t n = 0, cap = 0, m = 0;
	*need = 0;
	for (size_t i = 0; i < l->n; i++)
		cap += reader_image_nblocks(l->v[i].v->img);
	if (!(kl = malloc((cap ? cap : 1) * sizeof(*kl))))
		return NULL;
	for (size_t i = 0; i < l->n; i++) {
		struct reader_image *img = l->v[i].v->img;
		for (size_t b = 0; b < reader_image_nblocks(img); b++)
			if (!reader_image_block(img, b, kl[n].key, &kl[n].len))
				n++;
	}
	qsort(kl, n, sizeof(*kl), cmp_key_len);
	if (!(keys = malloc((n ? n : 1) * CACHE_KEY_LEN))) {
		free(kl);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (m && !memcmp(keys[m - 1], kl[i].key, CACHE_KEY_LEN))
			continue;
		memcpy(keys[m++], kl[i].key, CACHE_KEY_LEN);
		*need += kl[i].len;
	}
	free(kl);
	*nkeys = m;
	return keys;
}

static int same_list(const struct pinned *a, size_t na, const struct pinned *b, size_t nb)
{
	if (na != nb)
		return 0;
	for (size_t i = 0; i < na; i++)
		if (a[i].v != b[i].v)
			return 0;
	return 1;
}

static int block_present(struct imgfs *fs, struct reader_image *img, size_t b, uint32_t *len)
{
	unsigned char key[CACHE_KEY_LEN];
	if (reader_image_block(img, b, key, len))
		return 1;
	return cache_has(fs->cache, key);
}

static uint64_t cached_bytes(struct imgfs *fs, struct reader_image *img)
{
	uint64_t n = 0;
	for (size_t b = 0; b < reader_image_nblocks(img); b++) {
		uint32_t len;
		if (block_present(fs, img, b, &len))
			n += len;
	}
	return n;
}

void pins_update(struct imgfs *fs)
{
	struct pins *p = fs->pins;
	struct plist l = {0};
	struct err e = {0};
	unsigned char(*keys)[CACHE_KEY_LEN] = NULL, digest[32];
	size_t nkeys = 0, ncur = 0;
	uint64_t need = 0, bytes = 0;
	struct pinned *old;
	size_t nold;
	int rc;

	if (!p)
		return;
	if (fs->o.pin_file) {
		char **g = NULL;
		size_t ng = 0;
		if (read_globs(fs->o.pin_file, &g, &ng, &e)) {
			if (!p->file_failed)
				log_warn("%s; keeping the pins it had", e.msg);
			p->file_failed = 1;
		} else {
			if (p->file_failed)
				log_info("pin file %s read again", fs->o.pin_file);
			p->file_failed = 0;
			strings_free(p->file_globs, p->nfile_globs);
			p->file_globs = g;
			p->nfile_globs = ng;
		}
	}

	rc = 0;
	if (fs->o.npin_globs || p->nfile_globs) {
		pthread_rwlock_rdlock(&fs->lock);
		rc = fs->root ? walk(fs, p, fs->root, &l) : 0;
		ncur = l.n;
		if (!rc)
			rc = previous_versions(fs, p, &l);
		pthread_rwlock_unlock(&fs->lock);
	}
	if (rc || !(keys = pinned_keys(&l, &nkeys, &need))) {
		log_warn("pins: out of memory; the pinned set is not updated");
		goto out;
	}

	hash_sha256(keys, nkeys * CACHE_KEY_LEN, digest);
	if (!p->have_digest || memcmp(digest, p->digest, sizeof(digest))) {
		if (cache_pins_set(fs->cache, p->owner, (const unsigned char(*)[CACHE_KEY_LEN])keys,
		                   nkeys, &e)) {
			log_warn("pins: %s; pinned blocks may be evicted", e.msg);
		} else {
			memcpy(p->digest, digest, sizeof(digest));
			p->have_digest = 1;
		}
	}
	if (need > fs->o.cache_size) {
		uint64_t excess = need - fs->o.cache_size;
		if (excess != p->logged_excess) {
			char h[32];
			size_format(excess, h, sizeof(h));
			log_error("pinned images do not fit in the cache: their blocks take %llu "
			          "bytes, --cache-size is %llu: %llu bytes (%s) too many; raise "
			          "--cache-size or pin fewer images",
			          (unsigned long long)need, (unsigned long long)fs->o.cache_size,
			          (unsigned long long)excess, h);
			p->logged_excess = excess;
		}
		atomic_store(&p->overfull, 1);
	} else {
		p->logged_excess = 0;
		atomic_store(&p->overfull, 0);
	}

	for (size_t i = 0; i < l.n; i++) {
		atomic_store(&l.v[i].v->pinned, 1);
		bytes += l.v[i].v->size;
	}
	/* p->list changes only here (the refresh thread): read without the lock */
	if (same_list(p->list, p->n, l.v, l.n)) {
		old = l.v; /* freed below instead */
		nold = l.n;
	} else {
		uint64_t have = 0;
		/* what the stats say until the prefetch thread counts again */
		for (size_t i = 0; i < l.n; i++)
			have += cached_bytes(fs, l.v[i].v->img);
		atomic_store(&p->cached, have);
		pthread_mutex_lock(&p->mu);
		old = p->list;
		nold = p->n;
		p->list = l.v;
		p->n = l.n;
		p->gen++;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		for (size_t i = 0; i < nold; i++) {
			int still = 0;
			for (size_t j = 0; j < l.n && !still; j++)
				still = l.v[j].v == old[i].v;
			if (!still)
				atomic_store(&old[i].v->pinned, 0);
		}
	}
	atomic_store(&p->images, ncur);
	atomic_store(&p->bytes, bytes);
	list_free(old, nold);
	l.v = NULL;
	l.n = 0;
out:
	list_free(l.v, l.n);
	free(keys);
}

/* ---- the prefetch thread ---- */

static int interrupted_locked(struct pins *p, unsigned gen)
{
	return p->stop || p->gen != gen;
}

/* Sleep until time_mono() reaches `until`; 1 when the set changed or imgfs
 * stops meanwhile. */
static int nap_until(struct pins *p, unsigned gen, double until)
{
	int r;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		double left = until - time_mono();
		struct timespec ts;
		if (interrupted_locked(p, gen) || left <= 0)
			break;
		time_deadline(CLOCK_MONOTONIC, left, &ts);
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	r = interrupted_locked(p, gen);
	pthread_mutex_unlock(&p->mu);
	return r;
}

/* Behind the cache writer, behind demand reads, within the rate: 1 when
 * interrupted. */
static int wait_turn(struct imgfs *fs, struct pins *p, unsigned gen, uint64_t bytes)
{
	while (cache_backlog(fs->cache) > BACKLOG_MAX)
		if (nap_until(p, gen, time_mono() + NAP_S))
			return 1;
	for (;;) {
		double last;
		unsigned busy = reader_demand(fs->reader, &last);
		if (!busy && time_mono() - last >= QUIET_S)
			break;
		if (nap_until(p, gen, time_mono() + NAP_S))
			return 1;
	}
	if (fs->o.prefetch_rate) {
		/* a token bucket that holds one GET's worth: the time a GET takes
		 * is not lost to the rate, and an idle spell buys one GET only */
		double now = time_mono(), cost = (double)bytes / (double)fs->o.prefetch_rate, at;
		pthread_mutex_lock(&p->mu);
		if (p->tb < now - cost)
			p->tb = now - cost;
		at = p->tb += cost;
		pthread_mutex_unlock(&p->mu);
		if (nap_until(p, gen, at))
			return 1;
	}
	return 0;
}

/* The missing blocks of one version, in runs of consecutive blocks (one GET
 * each), fetched by up to WORKERS threads (1 with a rate). */
struct fetch {
	struct imgfs *fs;
	struct pins *p;
	const struct pinned *pv;
	unsigned gen;
	size_t run_max;
	pthread_mutex_t mu;
	size_t next; /* block to look at next */
	int rc;      /* 0, 1 failed (logged), 2 interrupted */
	uint64_t fetched;
};

/* The next run of missing blocks: 1 (first, count, bytes), 0 none left. */
static int next_run(struct fetch *f, size_t *first, size_t *count, uint64_t *bytes)
{
	struct reader_image *img = f->pv->v->img;
	size_t nb = reader_image_nblocks(img), i, j;
	uint32_t len;
	int found = 0;
	pthread_mutex_lock(&f->mu);
	for (i = f->next; !f->rc && i < nb; i++)
		if (!block_present(f->fs, img, i, &len))
			break;
	if (!f->rc && i < nb) {
		*bytes = 0;
		for (j = i; j < nb && j - i < f->run_max && !block_present(f->fs, img, j, &len);
		     j++)
			*bytes += len;
		*first = i;
		*count = j - i;
		f->next = j;
		found = 1;
	}
	pthread_mutex_unlock(&f->mu);
	return found;
}

static void *fetch_worker(void *arg)
{
	struct fetch *f = arg;
	struct reader_image *img = f->pv->v->img;
	uint32_t bs = reader_image_block_size(img);
	unsigned char *buf = malloc(f->run_max * bs);
	size_t first, count;
	uint64_t bytes;
	int rc = 0;

	if (!buf) {
		log_warn("prefetching pinned %s: out of memory", f->pv->name);
		rc = 1;
	}
	while (!rc && next_run(f, &first, &count, &bytes)) {
		struct err e = {0};
		if (wait_turn(f->fs, f->p, f->gen, bytes)) {
			rc = 2;
		} else if (reader_prefetch(img, (uint64_t)first * bs, (size_t)bytes, buf, &e)) {
			pthread_mutex_lock(&f->p->mu);
			rc = interrupted_locked(f->p, f->gen) ? 2 : 1;
			pthread_mutex_unlock(&f->p->mu);
			pthread_mutex_lock(&f->mu);
			if (rc == 1 && !f->rc && !atomic_exchange(&f->p->failing, 1))
				log_warn("prefetching pinned %s: %s; trying again every %g s",
				         f->pv->name, e.msg, RETRY_S);
			else if (rc == 1 && !f->rc)
				log_debug("prefetching pinned %s: %s", f->pv->name, e.msg);
			pthread_mutex_unlock(&f->mu);
		} else {
			if (atomic_exchange(&f->p->failing, 0))
				log_info("prefetching pinned images again");
			atomic_fetch_add(&f->p->cached, bytes);
			pthread_mutex_lock(&f->mu);
			f->fetched += bytes;
			pthread_mutex_unlock(&f->mu);
		}
	}
	pthread_mutex_lock(&f->mu);
	if (rc && (!f->rc || rc == 2))
		f->rc = rc;
	pthread_mutex_unlock(&f->mu);
	free(buf);
	return NULL;
}

/* Fetch the missing blocks of one version.  0 done (*fetched bytes), 1
 * failed (logged), 2 interrupted. */
static int fetch_missing(struct imgfs *fs, struct pins *p, const struct pinned *pv, unsigned gen,
                         uint64_t *fetched)
{
	struct fetch f = {.fs = fs, .p = p, .pv = pv, .gen = gen};
	uint32_t bs = reader_image_block_size(pv->v->img);
	pthread_t th[WORKERS - 1];
	unsigned nth = 0, want = fs->o.prefetch_rate ? 1 : WORKERS;

	f.run_max = RUN_MAX_BYTES / bs ? RUN_MAX_BYTES / bs : 1;
	if (fs->o.prefetch_rate) {
		/* GETs of half a second each at most: the rate holds over short spans */
		uint64_t r = fs->o.prefetch_rate / 2 / bs;
		if (r < f.run_max)
			f.run_max = r ? (size_t)r : 1;
	}
	pthread_mutex_init(&f.mu, NULL);
	while (nth + 1 < want && !pthread_create(&th[nth], NULL, fetch_worker, &f))
		nth++;
	fetch_worker(&f);
	for (unsigned i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&f.mu);
	*fetched = f.fetched;
	return f.rc;
}

/* One pass over the set: 0 every version whole (or as whole as the cache
 * allows), 1 try again later, 2 the set changed. */
static int pass(struct imgfs *fs, struct pins *p, struct pinned *l, size_t n, unsigned gen)
{
	uint64_t *have = calloc(n ? n : 1, sizeof(*have)), total = 0;
	int rc = 0;
	if (!have)
		return 1;
	for (size_t i = 0; i < n; i++)
		total += have[i] = cached_bytes(fs, l[i].v->img);
	atomic_store(&p->cached, total);
	for (size_t i = 0; i < n && rc != 2; i++) {
		struct reader_image *img = l[i].v->img;
		uint64_t size = reader_image_size(img);
		double t0 = time_mono();
		uint64_t fetched = 0;
		int tries = atomic_load(&p->overfull) ? 1 : RECHECKS;
		for (int k = 0; k < tries && have[i] < size; k++) {
			uint64_t got = 0, now;
			int r = fetch_missing(fs, p, &l[i], gen, &got);
			fetched += got;
			if (r) {
				rc = r;
				break;
			}
			/* on disk now, or dropped by a busy writer or a full cache */
			cache_flush(fs->cache);
			now = cached_bytes(fs, img);
			atomic_fetch_add(&p->cached, now - have[i] - got);
			have[i] = now;
		}
		if (have[i] == size && !l[i].v->whole_logged) {
			l[i].v->whole_logged = 1;
			log_info("pinned %s is whole: %llu bytes cached (%llu fetched in %.1f s)",
			         l[i].name, (unsigned long long)size, (unsigned long long)fetched,
			         time_mono() - t0);
		}
		if (rc == 1)
			break;
	}
	free(have);
	return rc;
}

static void *prefetch_main(void *arg)
{
	struct imgfs *fs = arg;
	struct pins *p = fs->pins;
	unsigned seen = 0;
	int again = 0;
	double retry_at = 0;

	pthread_setname_np(pthread_self(), "imgfs-prefetch");
	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct pinned *l;
		size_t n;
		int rc;
		while (!p->stop && p->gen == seen && !(again && time_mono() >= retry_at)) {
			if (again) {
				pthread_mutex_unlock(&p->mu);
				nap_until(p, seen, retry_at);
				pthread_mutex_lock(&p->mu);
			} else {
				pthread_cond_wait(&p->cv, &p->mu);
			}
		}
		if (p->stop)
			break;
		seen = p->gen;
		n = p->n;
		l = calloc(n ? n : 1, sizeof(*l));
		for (size_t i = 0; l && i < n; i++) {
			l[i].v = version_ref(p->list[i].v);
			l[i].name = strdup(p->list[i].name ? p->list[i].name : "");
		}
		pthread_mutex_unlock(&p->mu);
		rc = l ? pass(fs, p, l, n, seen) : 1;
		if (l)
			list_free(l, n);
		pthread_mutex_lock(&p->mu);
		again = rc == 1;
		retry_at = time_mono() + RETRY_S;
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int pins_start(struct imgfs *fs, struct err *e)
{
	struct pins *p = fs->pins;
	if (!p)
		return 0;
	if (pthread_create(&p->th, NULL, prefetch_main, fs))
		return err_set(e, ERR_IO, "cannot start the prefetch thread");
	p->started = 1;
	return 0;
}

void pins_stop(struct imgfs *fs)
{
	struct pins *p = fs->pins;
	if (!p)
		return;
	if (p->started) {
		pthread_mutex_lock(&p->mu);
		p->stop = 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		pthread_join(p->th, NULL);
	}
	list_free(p->list, p->n);
	strings_free(p->file_globs, p->nfile_globs);
	free(p->owner);
	pthread_mutex_destroy(&p->mu);
	pthread_mutex_destroy(&p->upd_mu);
	pthread_cond_destroy(&p->cv);
	free(p);
	fs->pins = NULL;
}

void pins_lock(struct imgfs *fs)
{
	if (fs->pins)
		pthread_mutex_lock(&fs->pins->upd_mu);
}

void pins_unlock(struct imgfs *fs)
{
	if (fs->pins)
		pthread_mutex_unlock(&fs->pins->upd_mu);
}

void pins_get_stats(struct imgfs *fs, struct pin_stats *out)
{
	struct pins *p = fs->pins;
	memset(out, 0, sizeof(*out));
	if (!p)
		return;
	pthread_mutex_lock(&p->upd_mu);
	out->images = atomic_load(&p->images);
	out->bytes = atomic_load(&p->bytes);
	out->cached_bytes = atomic_load(&p->cached);
	pthread_mutex_unlock(&p->upd_mu);
	if (out->cached_bytes > out->bytes)
		out->cached_bytes = out->bytes;
}
