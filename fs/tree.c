/* The listing state (images/ and metadata/ of the bucket, with the checksum
 * records) and the tree of nodes the mount shows.
 *
 * Inode numbers are derived from the path (the first 63 bits of its SHA-256;
 * a collision takes the next candidate hash of "path\n<n>"), so the same
 * path keeps its inode across refreshes and remounts.  Nodes are never freed
 * while mounted: the kernel may still name a removed one; it is only taken
 * out of its directory.
 *
 * An image whose ETag or record changed gets a new `struct version`; open
 * handles keep the version they opened (the reader sends If-Match with its
 * ETag), new opens see the new one. */
#include "fs/imgfs.h"

#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/record_index.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 255
#define IMAGE_PREFIX "images/"

/* Kept versions (docs/design.md): versions/<hex> with its record at
 * metadata/versions/<hex>.json.  In the state, a version is an sobj keyed
 * "versions/<hex>" whose srec dest is "versions/<hex>" (record_meta_key of
 * that is the record's key); it is published only under by-sha256. */
static int is_version_key(const char *key)
{
	return !strncmp(key, RECORD_VERSIONS_PREFIX, strlen(RECORD_VERSIONS_PREFIX));
}

/* The srec dest of an object of the state. */
static const char *obj_dest(const char *key)
{
	return is_version_key(key) ? key : key + strlen(IMAGE_PREFIX);
}

/* ---- state ---- */

void state_free(struct state *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->nimgs; i++)
		free(st->imgs[i].key);
	for (size_t i = 0; i < st->nrecs; i++) {
		free(st->recs[i].dest);
		free(st->recs[i].json);
	}
	free(st->imgs);
	free(st->recs);
	free(st->text);
	free(st);
}

static int cmp_sobj(const void *a, const void *b)
{
	return strcmp(((const struct sobj *)a)->key, ((const struct sobj *)b)->key);
}

static int cmp_s3obj(const void *a, const void *b)
{
	return strcmp(((const struct s3_object *)a)->key, ((const struct s3_object *)b)->key);
}

static int cmp_srec(const void *a, const void *b)
{
	return strcmp(((const struct srec *)a)->dest, ((const struct srec *)b)->dest);
}

const struct srec *state_find_rec(const struct state *st, const char *dest)
{
	struct srec k = {.dest = (char *)dest};
	if (!st || !st->nrecs)
		return NULL;
	return bsearch(&k, st->recs, st->nrecs, sizeof(k), cmp_srec);
}

static char *state_serialize(const struct state *st)
{
	json_t *root = json_object(), *imgs = json_array(), *recs = json_array();
	char *text = NULL;
	if (!root || !imgs || !recs)
		goto out;
	json_object_set_new(root, "version", json_integer(1));
	for (size_t i = 0; i < st->nimgs; i++) {
		const struct sobj *o = &st->imgs[i];
		json_array_append_new(imgs, json_pack("{s:s,s:I,s:s,s:I}", "key", o->key, "size",
		                                      (json_int_t)o->size, "etag", o->etag, "mtime",
		                                      (json_int_t)o->mtime));
	}
	for (size_t i = 0; i < st->nrecs; i++) {
		const struct srec *r = &st->recs[i];
		json_array_append_new(recs, json_pack("{s:s,s:s,s:s}", "dest", r->dest, "etag",
		                                      r->meta_etag, "json", r->json));
	}
	json_object_set(root, "images", imgs);
	json_object_set(root, "records", recs);
	text = json_dumps(root, JSON_COMPACT);
out:
	json_decref(imgs);
	json_decref(recs);
	json_decref(root);
	return text;
}

static int copy_etag(char dst[S3_ETAG_MAX], const char *src)
{
	if (!src || strlen(src) >= S3_ETAG_MAX)
		return -1;
	strcpy(dst, src);
	return 0;
}

static struct state *state_parse(const char *text, size_t len)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, 0, &je), *imgs, *recs;
	struct state *st = calloc(1, sizeof(*st));
	if (!root || !st)
		goto bad;
	imgs = json_object_get(root, "images");
	recs = json_object_get(root, "records");
	if (json_integer_value(json_object_get(root, "version")) != 1 || !json_is_array(imgs) ||
	    !json_is_array(recs))
		goto bad;
	st->imgs = calloc(json_array_size(imgs) + 1, sizeof(*st->imgs));
	st->recs = calloc(json_array_size(recs) + 1, sizeof(*st->recs));
	if (!st->imgs || !st->recs)
		goto bad;
	for (size_t i = 0; i < json_array_size(imgs); i++) {
		json_t *o = json_array_get(imgs, i);
		const char *key = json_string_value(json_object_get(o, "key"));
		struct sobj *so = &st->imgs[st->nimgs];
		if (!key ||
		    (strncmp(key, IMAGE_PREFIX, strlen(IMAGE_PREFIX)) && !is_version_key(key)) ||
		    !(so->key = strdup(key)))
			goto bad;
		st->nimgs++;
		so->size = (uint64_t)json_integer_value(json_object_get(o, "size"));
		so->mtime = (time_t)json_integer_value(json_object_get(o, "mtime"));
		if (copy_etag(so->etag, json_string_value(json_object_get(o, "etag"))))
			goto bad;
	}
	for (size_t i = 0; i < json_array_size(recs); i++) {
		json_t *o = json_array_get(recs, i);
		const char *dest = json_string_value(json_object_get(o, "dest"));
		const char *js = json_string_value(json_object_get(o, "json"));
		struct srec *sr = &st->recs[st->nrecs];
		if (!dest || !js || !(sr->dest = strdup(dest)))
			goto bad;
		st->nrecs++;
		if (!(sr->json = strdup(js)) ||
		    copy_etag(sr->meta_etag, json_string_value(json_object_get(o, "etag"))))
			goto bad;
	}
	qsort(st->imgs, st->nimgs, sizeof(*st->imgs), cmp_sobj);
	qsort(st->recs, st->nrecs, sizeof(*st->recs), cmp_srec);
	if (!(st->text = strndup(text, len)))
		goto bad;
	json_decref(root);
	return st;
bad:
	json_decref(root);
	state_free(st);
	return NULL;
}

int state_load(struct cache *c, const char *name, struct state **out)
{
	char *data = NULL;
	size_t len = 0;
	struct err e = {0};
	int rc;
	*out = NULL;
	rc = cache_meta_get(c, name, &data, &len, &e);
	if (rc < 0) {
		log_warn("reading the cached listing: %s", e.msg);
		return -1;
	}
	if (rc == 0)
		return 0;
	*out = state_parse(data, len);
	free(data);
	if (!*out) {
		log_warn("the cached listing is unreadable; ignoring it");
		return -1;
	}
	return 1;
}

/* GET the records of todo in parallel (recindex_get_many); a record deleted
 * since the listing is left without json. */
static int fetch_records(const struct s3_config *cfg, struct s3 *s, const struct s3_object *metas,
                         size_t nmetas, struct srec **todo, size_t n, struct err *e)
{
	struct recindex_get *v = calloc(n + 1, sizeof(*v));
	char **keys = calloc(n + 1, sizeof(*keys));
	int rc = -1;
	if (!v || !keys) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct s3_object k = {0}, *m;
		if (!(keys[i] = k.key = record_meta_key(todo[i]->dest))) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		v[i].key = keys[i];
		/* its listed size caps the GET (todo holds listed records only) */
		m = bsearch(&k, metas, nmetas, sizeof(k), cmp_s3obj);
		v[i].size = m ? m->size : 0;
	}
	if (recindex_get_many(cfg, s, v, n, e))
		goto out;
	for (size_t i = 0; i < n; i++) {
		todo[i]->json = v[i].json;
		v[i].json = NULL;
		/* the ETag of what we read (it may be newer than the listing's) */
		if (todo[i]->json)
			copy_etag(todo[i]->meta_etag, v[i].etag);
	}
	rc = 0;
out:
	recindex_gets_free(v, n);
	if (keys)
		for (size_t i = 0; i < n; i++)
			free(keys[i]);
	free(keys);
	return rc;
}

/* Fill the records of todo that the record index holds unchanged (same ETag
 * as the listing); returns how many are left to fetch, compacted at the
 * front of todo.  Any trouble with the index only means more GETs. */
static size_t take_from_index(struct s3 *s, const struct s3_object *metas, size_t nmetas,
                              struct srec **todo, size_t n)
{
	struct recindex ix = {0};
	struct err e = {0};
	size_t left = 0;
	if (recindex_load(s, metas, nmetas, &ix, &e)) {
		if (e.code == ERR_NOTFOUND)
			log_debug("no record index (%s)", RECINDEX_KEY);
		else
			log_warn("not using the record index: %s", e.msg);
		return n;
	}
	for (size_t i = 0; i < n; i++) {
		struct srec *r = todo[i];
		char *key = record_meta_key(r->dest);
		const struct recindex_entry *en =
		        key ? recindex_lookup(&ix, key, r->meta_etag) : NULL;
		free(key);
		if (en && (r->json = strdup(en->json)))
			continue;
		todo[left++] = r;
	}
	log_debug("record index: %zu of %zu record(s) taken from %s", n - left, n, RECINDEX_KEY);
	recindex_free(&ix);
	return left;
}

static int has_image_prefix(const char *key)
{
	return !strncmp(key, IMAGE_PREFIX, strlen(IMAGE_PREFIX));
}

static int has_suffix(const char *s, const char *suf)
{
	size_t ls = strlen(s), lf = strlen(suf);
	return ls >= lf && !strcmp(s + ls - lf, suf);
}

/* While state_fetch builds recs (not sorted yet): is dest there? */
static int has_dest(const struct state *st, const char *dest)
{
	for (size_t i = 0; i < st->nrecs; i++)
		if (!strcmp(st->recs[i].dest, dest))
			return 1;
	return 0;
}

/* The listing of metadata/, on a connection of its own while the caller
 * lists images/ and versions/: a listing is one request per 1000 keys, one
 * after the other, so a bucket of 10,000 images took 20 round trips in a
 * row to mount.  Through a 20 ms round trip such a mount took 1.4 s instead
 * of 1.9-2.2 (tests/bench/README.md); on loopback the local Swift serves
 * the two listings in turn, and nothing is gained. */
struct meta_listing {
	const struct s3_config *cfg;
	struct s3_object *metas;
	size_t nmetas;
	struct err e;
	int rc;
};

static void *list_metas(void *arg)
{
	struct meta_listing *l = arg;
	struct s3 *s = s3_open(l->cfg, &l->e);
	l->rc = s ? s3_list(s, "metadata/", NULL, &l->metas, &l->nmetas, NULL, NULL, &l->e) : -1;
	s3_close(s);
	return NULL;
}

/* All three listings; -1 with e set when one failed (nothing to free). */
static int list_bucket(const struct s3_config *cfg, struct s3 *s, struct s3_object **imgs,
                       size_t *nimgs, struct s3_object **metas, size_t *nmetas,
                       struct s3_object **vobjs, size_t *nvobjs, struct err *e)
{
	struct meta_listing l = {.cfg = cfg};
	pthread_t t;
	int threaded = pthread_create(&t, NULL, list_metas, &l) == 0, rc;
	if (!threaded)
		l.rc = s3_list(s, "metadata/", NULL, &l.metas, &l.nmetas, NULL, NULL, &l.e);
	rc = s3_list(s, "images/", NULL, imgs, nimgs, NULL, NULL, e);
	if (!rc)
		rc = s3_list(s, RECORD_VERSIONS_PREFIX, NULL, vobjs, nvobjs, NULL, NULL, e);
	if (threaded)
		pthread_join(t, NULL);
	if (!rc && l.rc) {
		*e = l.e;
		rc = -1;
	}
	if (rc) {
		s3_objects_free(*imgs, *nimgs);
		s3_objects_free(*vobjs, *nvobjs);
		s3_objects_free(l.metas, l.nmetas);
		*imgs = *vobjs = NULL;
		*nimgs = *nvobjs = 0;
		return -1;
	}
	*metas = l.metas;
	*nmetas = l.nmetas;
	return 0;
}

int state_fetch(const struct s3_config *cfg, struct s3 *s, const struct state *prev,
                struct state **out, struct err *e)
{
	struct s3_object *imgs = NULL, *metas = NULL, *vobjs = NULL;
	size_t nimgs = 0, nmetas = 0, nvobjs = 0, ntodo = 0, nclash = 0;
	struct srec **todo = NULL;
	struct state *st = calloc(1, sizeof(*st));
	int rc = -1;

	*out = NULL;
	if (!st)
		return err_set(e, ERR_IO, "out of memory");
	if (list_bucket(cfg, s, &imgs, &nimgs, &metas, &nmetas, &vobjs, &nvobjs, e)) {
		err_prefix(e, "listing the bucket");
		goto out;
	}
	st->imgs = calloc(nimgs + nvobjs + 1, sizeof(*st->imgs));
	st->recs = calloc(nimgs + nvobjs + 1, sizeof(*st->recs));
	todo = calloc(nimgs + nvobjs + 1, sizeof(*todo));
	if (!st->imgs || !st->recs || !todo) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	/* metadata keys, sorted, to find each image's record */
	if (nmetas)
		qsort(metas, nmetas, sizeof(*metas), cmp_s3obj);
	for (size_t i = 0; i < nimgs + nvobjs; i++) {
		const struct s3_object *o = i < nimgs ? &imgs[i] : &vobjs[i - nimgs];
		struct sobj *so;
		struct s3_object mk = {0}, *m;
		const char *dest;
		const struct srec *old;
		if (i < nimgs ? !has_image_prefix(o->key) : !is_version_key(o->key))
			continue; /* s3_list drops those; the name is made from the rest */
		dest = obj_dest(o->key);
		if (!*dest || has_suffix(o->key, "/"))
			continue; /* "directory" markers */
		/* images/versions/<x> has its record where versions/<x> has its
		 * own: the one record key cannot serve both; the image wins */
		if (i >= nimgs && nclash && has_dest(st, dest))
			continue;
		if (i < nimgs && is_version_key(dest))
			nclash++;
		so = &st->imgs[st->nimgs];
		if (!(so->key = strdup(o->key)))
			goto oom;
		st->nimgs++;
		so->size = o->size;
		so->mtime = o->mtime;
		copy_etag(so->etag, o->etag);

		if (!(mk.key = record_meta_key(dest)))
			goto oom;
		m = nmetas ? bsearch(&mk, metas, nmetas, sizeof(mk), cmp_s3obj) : NULL;
		free(mk.key);
		if (!m)
			continue;
		struct srec *r = &st->recs[st->nrecs];
		if (!(r->dest = strdup(dest)))
			goto oom;
		st->nrecs++;
		copy_etag(r->meta_etag, m->etag);
		old = state_find_rec(prev, dest);
		if (old && !strcmp(old->meta_etag, m->etag)) {
			if (!(r->json = strdup(old->json)))
				goto oom;
		} else {
			todo[ntodo++] = r;
		}
	}
	if (ntodo > RECINDEX_MIN_USE)
		ntodo = take_from_index(s, metas, nmetas, todo, ntodo);
	if (ntodo) {
		log_debug("fetching %zu checksum record(s)", ntodo);
		if (fetch_records(cfg, s, metas, nmetas, todo, ntodo, e))
			goto out;
	}
	/* drop records that vanished between the listing and the GET */
	{
		size_t w = 0;
		for (size_t i = 0; i < st->nrecs; i++) {
			if (st->recs[i].json)
				st->recs[w++] = st->recs[i];
			else
				free(st->recs[i].dest);
		}
		st->nrecs = w;
	}
	qsort(st->imgs, st->nimgs, sizeof(*st->imgs), cmp_sobj);
	qsort(st->recs, st->nrecs, sizeof(*st->recs), cmp_srec);
	if (!(st->text = state_serialize(st)))
		goto oom;
	*out = st;
	st = NULL;
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	free(todo);
	s3_objects_free(imgs, nimgs);
	s3_objects_free(metas, nmetas);
	s3_objects_free(vobjs, nvobjs);
	state_free(st);
	return rc;
}

/* ---- nodes ---- */

static size_t hash_str(const char *s)
{
	size_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static int grow(struct imgfs *fs)
{
	size_t ncap = fs->cap ? fs->cap * 2 : 1024;
	struct node **bi = calloc(ncap, sizeof(*bi)), **bp = calloc(ncap, sizeof(*bp));
	if (!bi || !bp) {
		free(bi);
		free(bp);
		return -1;
	}
	for (size_t i = 0; i < fs->cap; i++) {
		for (struct node *n = fs->by_ino[i], *nx; n; n = nx) {
			nx = n->ino_next;
			n->ino_next = bi[n->ino & (ncap - 1)];
			bi[n->ino & (ncap - 1)] = n;
		}
		for (struct node *n = fs->by_path[i], *nx; n; n = nx) {
			size_t h = hash_str(n->path) & (ncap - 1);
			nx = n->path_next;
			n->path_next = bp[h];
			bp[h] = n;
		}
	}
	free(fs->by_ino);
	free(fs->by_path);
	fs->by_ino = bi;
	fs->by_path = bp;
	fs->cap = ncap;
	return 0;
}

struct node *tree_by_ino(struct imgfs *fs, fuse_ino_t ino)
{
	for (struct node *n = fs->by_ino[ino & (fs->cap - 1)]; n; n = n->ino_next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct node *by_path(struct imgfs *fs, const char *path)
{
	for (struct node *n = fs->by_path[hash_str(path) & (fs->cap - 1)]; n; n = n->path_next)
		if (!strcmp(n->path, path))
			return n;
	return NULL;
}

static fuse_ino_t path_ino(struct imgfs *fs, const char *path)
{
	unsigned char d[32];
	char buf[32];
	uint64_t v;
	if (!*path)
		return FUSE_ROOT_ID;
	hash_sha256(path, strlen(path), d);
	for (unsigned n = 1;; n++) {
		memcpy(&v, d, sizeof(v));
		v &= 0x7fffffffffffffffull;
		if (v > FUSE_ROOT_ID && !tree_by_ino(fs, v))
			return v;
		/* collision: the next candidate */
		struct hash *h = hash_new(HASH_SHA256);
		if (!h)
			return 0;
		snprintf(buf, sizeof(buf), "\n%u", n);
		hash_update(h, path, strlen(path));
		hash_update(h, buf, strlen(buf));
		hash_final(h, d);
		hash_free(h);
	}
}

static struct node *node_new(struct imgfs *fs, const char *path, enum nkind kind,
                             struct node *parent)
{
	struct node *n = calloc(1, sizeof(*n));
	const char *slash;
	if (!n || !(n->path = strdup(path)))
		goto fail;
	if (fs->nnodes + 1 > fs->cap / 2 && grow(fs))
		goto fail;
	if (!(n->ino = path_ino(fs, path)))
		goto fail;
	slash = strrchr(n->path, '/');
	n->name = slash ? slash + 1 : n->path;
	n->kind = kind;
	n->parent = parent;
	n->ino_next = fs->by_ino[n->ino & (fs->cap - 1)];
	fs->by_ino[n->ino & (fs->cap - 1)] = n;
	n->path_next = fs->by_path[hash_str(path) & (fs->cap - 1)];
	fs->by_path[hash_str(path) & (fs->cap - 1)] = n;
	fs->nnodes++;
	return n;
fail:
	if (n)
		free(n->path);
	free(n);
	return NULL;
}

/* Take a node out of the path table (its path now names another node). */
static void unlink_path(struct imgfs *fs, struct node *n)
{
	struct node **pp = &fs->by_path[hash_str(n->path) & (fs->cap - 1)];
	for (; *pp; pp = &(*pp)->path_next) {
		if (*pp == n) {
			*pp = n->path_next;
			break;
		}
	}
	n->path_next = NULL;
}

static int cmp_kid(const void *a, const void *b)
{
	return strcmp((*(struct node *const *)a)->name, (*(struct node *const *)b)->name);
}

struct node *tree_child(struct node *dir, const char *name)
{
	size_t lo = 0, hi = dir->nkids;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name, dir->kids[mid]->name);
		if (!c)
			return dir->kids[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

static int kid_add(struct node *dir, struct node *k)
{
	if (dir->nkids == dir->kcap) {
		size_t nc = dir->kcap ? dir->kcap * 2 : 8;
		struct node **nk = realloc(dir->kids, nc * sizeof(*nk));
		if (!nk)
			return -1;
		dir->kids = nk;
		dir->kcap = nc;
	}
	dir->kids[dir->nkids++] = k;
	return 0;
}

struct version *version_ref(struct version *v)
{
	if (v)
		atomic_fetch_add(&v->refs, 1);
	return v;
}

void version_unref(struct version *v)
{
	if (!v || atomic_fetch_sub(&v->refs, 1) != 1)
		return;
	reader_image_unref(v->img);
	free(v->key);
	free(v->source_url);
	free(v);
}

/* A node for `path` of `kind`, live in generation fs->gen; parents first. */
static struct node *ensure(struct imgfs *fs, const char *path, enum nkind kind, int special)
{
	struct node *n = by_path(fs, path), *parent = NULL;
	if (*path) {
		const char *slash = strrchr(path, '/');
		char *pp = slash ? strndup(path, (size_t)(slash - path)) : strdup("");
		if (!pp)
			return NULL;
		parent = ensure(fs, pp, N_DIR, special && slash);
		free(pp);
		if (!parent)
			return NULL;
	}
	if (n && n->kind != kind) {
		/* a file became a directory or the other way round: a new inode
		 * (the old node is retired with the others that were not seen) */
		unlink_path(fs, n);
		n = NULL;
	}
	if (!n && !(n = node_new(fs, path, kind, parent)))
		return NULL;
	n->parent = parent;
	n->special = special;
	if (n->seen != fs->gen) {
		n->seen = fs->gen;
		n->live = 1;
		if (parent && kid_add(parent, n))
			return NULL;
	}
	return n;
}

static int valid_dest(const char *dest)
{
	const char *p = dest;
	if (!*dest)
		return 0;
	if (!strcmp(dest, IMGFS_CTL_DIR) || !strncmp(dest, IMGFS_CTL_DIR "/", 10))
		return 0;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (!len || len > NAME_MAX_LEN || (len == 1 && p[0] == '.') ||
		    (len == 2 && p[0] == '.' && p[1] == '.'))
			return 0;
		if (!slash)
			return 1;
		p = slash + 1;
	}
}

/* What two claims on one checksum must agree on: the size and the block map
 * (block size and every hash). */
static int map_digest(const struct record *rec, unsigned char out[32])
{
	unsigned char head[12];
	struct hash *h = hash_new(HASH_SHA256);
	if (!h)
		return -1;
	for (int i = 0; i < 8; i++)
		head[i] = (unsigned char)(rec->size >> (56 - 8 * i));
	for (int i = 0; i < 4; i++)
		head[8 + i] = (unsigned char)(rec->block_size >> (24 - 8 * i));
	hash_update(h, head, sizeof(head));
	hash_update(h, rec->hashes, rec->nblocks * sizeof(*rec->hashes));
	hash_final(h, out);
	hash_free(h);
	return 0;
}

static struct version *version_new(struct imgfs *fs, const struct sobj *o, const struct srec *sr,
                                   const struct record *rec)
{
	struct version *v = calloc(1, sizeof(*v));
	struct err e = {0};
	if (!v || !(v->key = strdup(o->key)))
		goto fail;
	atomic_init(&v->refs, 1);
	v->id = ++fs->next_ver_id;
	v->size = o->size;
	v->mtime = o->mtime;
	strcpy(v->etag, o->etag);
	if (rec) {
		v->verified = 1;
		strcpy(v->meta_etag, sr->meta_etag);
		snprintf(v->checksum, sizeof(v->checksum), "%s", rec->checksum);
		snprintf(v->uploaded_at, sizeof(v->uploaded_at), "%s", rec->uploaded_at);
		if ((rec->source_url && !(v->source_url = strdup(rec->source_url))) ||
		    map_digest(rec, v->map_digest))
			goto fail;
	}
	if (reader_image_open(fs->reader, o->key, o->size, o->etag, rec, &v->img, &e)) {
		log_warn("%s", e.msg);
		goto fail;
	}
	return v;
fail:
	if (v) {
		free(v->key);
		free(v->source_url);
	}
	free(v);
	return NULL;
}

struct inval {
	fuse_ino_t parent, ino;
	char *name; /* entry invalidation when set, else attributes of ino */
};

struct invals {
	struct inval *v;
	size_t n, cap;
};

static void inval_add(struct invals *iv, fuse_ino_t parent, fuse_ino_t ino, const char *name)
{
	if (iv->n == iv->cap) {
		size_t nc = iv->cap ? iv->cap * 2 : 16;
		struct inval *nv = realloc(iv->v, nc * sizeof(*nv));
		if (!nv)
			return; /* the kernel's timeouts still expire */
		iv->v = nv;
		iv->cap = nc;
	}
	iv->v[iv->n].parent = parent;
	iv->v[iv->n].ino = ino;
	iv->v[iv->n].name = name ? strdup(name) : NULL;
	iv->n++;
}

static int is_valid_record(const struct sobj *o, const struct srec *sr, struct record *rec,
                           int log_it)
{
	struct err e = {0};
	const char *dest = obj_dest(o->key);
	if (!sr) {
		if (log_it)
			log_info("%s: no checksum record (metadata/%s.json); not shown", dest,
			         dest);
		return 0;
	}
	if (record_parse(sr->json, strlen(sr->json), rec, &e)) {
		if (log_it)
			log_warn("%s: invalid checksum record: %s; not shown", dest, e.msg);
		return 0;
	}
	if (record_matches_object(rec, o->size, o->etag, &e)) {
		if (log_it)
			log_warn("%s; not shown", e.msg);
		record_free(rec);
		return 0;
	}
	/* a version is published under its name: its record must claim it */
	if (is_version_key(o->key) &&
	    (strncmp(rec->checksum, "sha256:", 7) ||
	     strcmp(rec->checksum + 7, o->key + strlen(RECORD_VERSIONS_PREFIX)))) {
		if (log_it)
			log_warn("%s: its record's checksum is %s, not its name; not shown", o->key,
			         rec->checksum);
		record_free(rec);
		return 0;
	}
	return 1;
}

/* Version for image object o: the node's current one when nothing changed. */
static int same_listing(const struct state *prev, const struct sobj *o, const struct srec *sr)
{
	struct sobj k = {.key = o->key};
	const struct sobj *po;
	const struct srec *pr;
	if (!prev || !prev->nimgs)
		return 0;
	po = bsearch(&k, prev->imgs, prev->nimgs, sizeof(k), cmp_sobj);
	pr = state_find_rec(prev, obj_dest(o->key));
	if (!po || strcmp(po->etag, o->etag) || po->size != o->size || !pr != !sr)
		return 0;
	return !sr || !strcmp(pr->meta_etag, sr->meta_etag);
}

static struct version *pick_version(struct imgfs *fs, struct node *n, const struct sobj *o,
                                    const struct srec *sr, int log_it)
{
	struct version *cur = n ? n->ver : NULL;
	struct record rec = {0};
	struct version *v;
	int valid;

	if (cur && !strcmp(cur->etag, o->etag) && cur->size == o->size && cur->mtime == o->mtime &&
	    ((cur->verified && sr && !strcmp(cur->meta_etag, sr->meta_etag)) ||
	     (!cur->verified && !sr)))
		return version_ref(cur);
	valid = is_valid_record(o, sr, &rec, log_it);
	if (!valid && !fs->o.allow_unverified)
		return NULL;
	if (cur && !valid && !cur->verified && !strcmp(cur->etag, o->etag) && cur->size == o->size)
		return version_ref(cur); /* unverified, with a record that is still invalid */
	v = version_new(fs, o, sr, valid ? &rec : NULL);
	if (valid)
		record_free(&rec);
	return v;
}

static int set_file(struct imgfs *fs, const char *path, struct version *v, int special,
                    struct invals *iv)
{
	struct node *n = ensure(fs, path, N_FILE, special);
	if (!n)
		return -1;
	if (n->ver != v) {
		if (n->ver && fs->mounted)
			inval_add(iv, 0, n->ino, NULL);
		version_unref(n->ver);
		n->ver = version_ref(v);
	}
	n->mtime = v->mtime;
	return 0;
}

static time_t dir_times(struct node *d)
{
	time_t m = 0;
	for (size_t i = 0; i < d->nkids; i++) {
		struct node *k = d->kids[i];
		time_t t = k->kind == N_DIR ? dir_times(k) : k->mtime;
		if (t > m)
			m = t;
	}
	return m;
}

static int cmp_ver_dest(const void *a, const void *b)
{
	const struct version *x = *(struct version *const *)a, *y = *(struct version *const *)b;
	int c = strcmp(x->checksum, y->checksum);
	return c ? c : strcmp(x->key, y->key);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every proper prefix ("a", "a/b" of "a/b/c") of the destinations: the
 * directories.  Sorted, for bsearch.  NULL only when out of memory. */
static char **dir_prefixes(const struct state *st, struct version **vers, size_t *n)
{
	size_t cap = 16, cnt = 0;
	char **v = malloc(cap * sizeof(*v));
	if (!v)
		return NULL;
	for (size_t i = 0; i < st->nimgs; i++) {
		const char *dest = st->imgs[i].key + strlen(IMAGE_PREFIX);
		if (!vers[i] || is_version_key(st->imgs[i].key))
			continue;
		for (const char *p = strchr(dest, '/'); p; p = strchr(p + 1, '/')) {
			if (cnt == cap) {
				char **nv = realloc(v, (cap *= 2) * sizeof(*v));
				if (!nv)
					goto oom;
				v = nv;
			}
			if (!(v[cnt] = strndup(dest, (size_t)(p - dest))))
				goto oom;
			cnt++;
		}
	}
	qsort(v, cnt, sizeof(*v), cmp_str);
	*n = cnt;
	return v;
oom:
	for (size_t i = 0; i < cnt; i++)
		free(v[i]);
	free(v);
	return NULL;
}

static void strings_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* /.imgstore/by-sha256/<hex> for every checksum that the records claiming it
 * agree on (same size and block map): then any of them serves the same
 * bytes, the first destination in order.  Records that disagree mean that
 * one of them claims a checksum that is not its own (whoever can write the
 * bucket could otherwise replace the base of every overlay): the name is not
 * published, and that is logged when it starts.  Under fs->lock. */
static int publish_by_sha256(struct imgfs *fs, struct version **vers, size_t nvers,
                             struct invals *iv)
{
	char **refused = calloc(nvers + 1, sizeof(*refused));
	size_t nrefused = 0;
	if (!refused)
		return -1;
	qsort(vers, nvers, sizeof(*vers), cmp_ver_dest);
	for (size_t i = 0, j; i < nvers; i = j) {
		char path[128];
		const char *hex;
		const struct version *odd = NULL;
		for (j = i + 1; j < nvers && !strcmp(vers[j]->checksum, vers[i]->checksum); j++)
			if (!odd && (vers[j]->size != vers[i]->size ||
			             memcmp(vers[j]->map_digest, vers[i]->map_digest, 32)))
				odd = vers[j];
		if (strncmp(vers[i]->checksum, "sha256:", 7))
			continue;
		hex = vers[i]->checksum + 7;
		if (odd) {
			if (!(refused[nrefused++] = strdup(hex)))
				goto oom;
			if (!fs->nbysha_refused ||
			    !bsearch(&hex, fs->bysha_refused, fs->nbysha_refused, sizeof(char *),
			             cmp_str))
				log_warn("by-sha256/%s: claimed by records that disagree (%s and "
				         "%s: different sizes or block maps); not published",
				         hex, obj_dest(vers[i]->key), obj_dest(odd->key));
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s/%s", IMGFS_CTL_DIR, IMGFS_BYSHA_DIR, hex);
		if (set_file(fs, path, vers[i], 1, iv))
			goto oom;
	}
	/* sorted already: vers are in checksum order */
	strings_free(fs->bysha_refused, fs->nbysha_refused);
	fs->bysha_refused = refused;
	fs->nbysha_refused = nrefused;
	return 0;
oom:
	strings_free(refused, nrefused);
	return -1;
}

int tree_apply(struct imgfs *fs, const struct state *st, const struct state *prev, int initial,
               struct err *e)
{
	struct invals iv = {0};
	struct version **vers = calloc(st->nimgs + 1, sizeof(*vers));
	char **dirs = NULL;
	size_t nvers = 0, nunv = 0, ndirs = 0, nimages = 0;
	uint64_t total = 0;
	int rc = -1;

	if (!vers)
		return err_set(e, ERR_IO, "out of memory");
	/* versions first, without the lock (records are parsed here) */
	pthread_rwlock_rdlock(&fs->lock);
	for (size_t i = 0; i < st->nimgs; i++) {
		const struct sobj *o = &st->imgs[i];
		const char *dest = o->key + strlen(IMAGE_PREFIX);
		struct node *n;
		if (is_version_key(o->key)) {
			/* published only under by-sha256, and only verified */
			const struct srec *sr = state_find_rec(st, o->key);
			char path[128];
			snprintf(path, sizeof(path), "%s/%s/%s", IMGFS_CTL_DIR, IMGFS_BYSHA_DIR,
			         o->key + strlen(RECORD_VERSIONS_PREFIX));
			n = by_path(fs, path);
			if (n && n->kind != N_FILE)
				n = NULL;
			vers[i] = pick_version(fs, n, o, sr, initial || !same_listing(prev, o, sr));
			if (vers[i] && !vers[i]->verified) {
				version_unref(vers[i]);
				vers[i] = NULL;
			}
			continue;
		}
		if (!valid_dest(dest)) {
			if (initial)
				log_warn("%s: not a usable path in the mount; skipped", o->key);
			vers[i] = NULL;
			continue;
		}
		n = by_path(fs, dest);
		if (n && n->kind != N_FILE)
			n = NULL;
		const struct srec *sr = state_find_rec(st, dest);
		vers[i] = pick_version(fs, n, o, sr, initial || !same_listing(prev, o, sr));
	}
	pthread_rwlock_unlock(&fs->lock);
	if (!(dirs = dir_prefixes(st, vers, &ndirs))) {
		for (size_t i = 0; i < st->nimgs; i++)
			version_unref(vers[i]);
		free(vers);
		return err_set(e, ERR_IO, "out of memory");
	}

	pthread_rwlock_wrlock(&fs->lock);
	fs->gen++;
	for (size_t i = 0; i < fs->cap; i++)
		for (struct node *n = fs->by_ino[i]; n; n = n->ino_next)
			n->nkids = 0;
	if (!ensure(fs, "", N_DIR, 0) || !(fs->ctl = ensure(fs, IMGFS_CTL_DIR, N_DIR, 1)) ||
	    !(fs->stats = ensure(fs, IMGFS_CTL_DIR "/" IMGFS_STATS_FILE, N_STATS, 1)) ||
	    !(fs->metrics = ensure(fs, IMGFS_CTL_DIR "/" IMGFS_METRICS, N_STATS, 1)) ||
	    !(fs->bysha = ensure(fs, IMGFS_CTL_DIR "/" IMGFS_BYSHA_DIR, N_DIR, 1)))
		goto oom;
	fs->root = tree_by_ino(fs, FUSE_ROOT_ID);
	for (size_t i = 0; i < st->nimgs; i++) {
		const char *dest;
		struct version *v = vers[i];
		vers[i] = NULL;
		if (!v)
			continue;
		if (is_version_key(st->imgs[i].key)) {
			vers[nvers++] = v; /* for by-sha256 only */
			continue;
		}
		dest = st->imgs[i].key + strlen(IMAGE_PREFIX);
		if (ndirs && bsearch(&dest, dirs, ndirs, sizeof(*dirs), cmp_str)) {
			if (initial)
				log_warn("%s is both an image and a directory; the directory wins",
				         dest);
			version_unref(v);
			continue;
		}
		vers[nvers++] = v;
		nimages++;
		if (set_file(fs, dest, v, 0, &iv))
			goto oom;
		total += v->size;
		if (!v->verified)
			nunv++;
	}

	if (publish_by_sha256(fs, vers, nvers, &iv))
		goto oom;

	/* what was not seen this time is gone */
	for (size_t i = 0; i < fs->cap; i++) {
		for (struct node *n = fs->by_ino[i]; n; n = n->ino_next) {
			if (n->seen == fs->gen || !n->live)
				continue;
			n->live = 0;
			if (fs->mounted && n->parent)
				inval_add(&iv, n->parent->ino, 0, n->name);
			version_unref(n->ver);
			n->ver = NULL;
		}
	}
	for (size_t i = 0; i < fs->cap; i++) {
		for (struct node *n = fs->by_ino[i]; n; n = n->ino_next) {
			if (n->kind != N_DIR || n->seen != fs->gen || !n->nkids)
				continue;
			qsort(n->kids, n->nkids, sizeof(*n->kids), cmp_kid);
		}
	}
	fs->root->mtime = dir_times(fs->root);
	for (size_t i = 0; i < fs->cap; i++)
		for (struct node *n = fs->by_ino[i]; n; n = n->ino_next)
			if (n->kind == N_DIR && n->live)
				n->mtime = n == fs->root ? n->mtime : dir_times(n);
	if (!fs->root->mtime)
		fs->root->mtime = fs->start_time;
	fs->ctl->mtime = fs->bysha->mtime = fs->stats->mtime = fs->metrics->mtime = fs->start_time;
	fs->total_bytes = total;
	fs->nimages = nimages;
	fs->nunverified = nunv;
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory while building the tree");
out:
	pthread_rwlock_unlock(&fs->lock);
	for (size_t i = 0; i < st->nimgs; i++)
		version_unref(vers[i]); /* compacted to [0, nvers); the rest is NULL */
	free(vers);
	for (size_t i = 0; i < ndirs; i++)
		free(dirs[i]);
	free(dirs);

	/* push the changes to the kernel, without the lock (it may call us) */
	for (size_t i = 0; i < iv.n; i++) {
		if (iv.v[i].name)
			fuse_lowlevel_notify_inval_entry(fs->se, iv.v[i].parent, iv.v[i].name,
			                                 strlen(iv.v[i].name));
		else
			fuse_lowlevel_notify_inval_inode(fs->se, iv.v[i].ino, -1, 0);
		free(iv.v[i].name);
	}
	if (fs->mounted && iv.n) {
		/* directory sizes/times */
		fuse_lowlevel_notify_inval_inode(fs->se, FUSE_ROOT_ID, -1, 0);
	}
	free(iv.v);
	return rc;
}

int tree_init(struct imgfs *fs, struct err *e)
{
	pthread_rwlock_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->pc_mu, NULL);
	pthread_mutex_init(&fs->refresh_mu, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&fs->refresh_cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (grow(fs))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}

void tree_free(struct imgfs *fs)
{
	for (size_t i = 0; i < fs->cap; i++) {
		for (struct node *n = fs->by_ino[i], *nx; n; n = nx) {
			nx = n->ino_next;
			version_unref(n->ver);
			free(n->kids);
			free(n->path);
			free(n);
		}
	}
	free(fs->by_ino);
	free(fs->by_path);
	fs->by_ino = fs->by_path = NULL;
	strings_free(fs->bysha_refused, fs->nbysha_refused);
	fs->bysha_refused = NULL;
	fs->nbysha_refused = 0;
	fs->cap = fs->nnodes = 0;
	pthread_rwlock_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->pc_mu);
}
