/* images.yaml -> struct manifest, validating everything in one pass and
 * collecting every problem (see manifest.h for the schema and the rules). */
#include "manifest/manifest.h"

#include "common/buf.h"
#include "common/file.h"

#include "manifest/mf_internal.h"
#include "manifest/yamltree.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- problems ---------------------------------------------------------- */

struct ctx {
	struct mf_problems *probs;
	int oom;
	/* The entry a problem is in: a name, or (no usable name) where. */
	const char *image, *overlay;
	char where[48]; /* "spec.images[3]: " */
};

static void subject_none(struct ctx *c)
{
	c->image = c->overlay = NULL;
	c->where[0] = '\0';
}

/* Problems inside entry idx of spec.images (kind "images") or spec.overlays. */
static void subject_entry(struct ctx *c, const char *kind, size_t idx, const char *name)
{
	subject_none(c);
	if (name && *name) {
		if (kind[0] == 'i')
			c->image = name;
		else
			c->overlay = name;
	} else {
		snprintf(c->where, sizeof(c->where), "spec.%s[%zu]: ", kind, idx);
	}
}

static void problem_at(struct ctx *c, int line, int col, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Append one problem (msg is copied); -1 when out of memory. */
static int problems_append(struct mf_problems *p, int line, int col, const char *image,
                           const char *overlay, const char *msg)
{
	struct mf_problem pr = {line, col, NULL, NULL, NULL};
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 16;
		struct mf_problem *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return -1;
		p->v = v;
		p->cap = cap;
	}
	pr.msg = strdup(msg);
	if (!pr.msg || (image && !(pr.image = strdup(image))) ||
	    (overlay && !(pr.overlay = strdup(overlay)))) {
		free(pr.msg);
		free(pr.image);
		free(pr.overlay);
		return -1;
	}
	p->v[p->n++] = pr;
	return 0;
}

static void problem_at(struct ctx *c, int line, int col, const char *fmt, ...)
{
	char msg[MF_WHY_MAX + 256];
	size_t w = strlen(c->where);
	va_list ap;
	if (c->oom)
		return;
	memcpy(msg, c->where, w);
	va_start(ap, fmt);
	vsnprintf(msg + w, sizeof(msg) - w, fmt, ap);
	va_end(ap);
	if (problems_append(c->probs, line, col, c->image, c->overlay, msg))
		c->oom = 1;
}

int mf_problems_add(struct mf_problems *p, int line, int col, const char *image, const char *fmt,
                    ...)
{
	char msg[MF_WHY_MAX + 256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return problems_append(p, line, col, image, NULL, msg);
}

#define problem(c, node, ...) problem_at((c), (node)->line, (node)->col, __VA_ARGS__)

void mf_problems_free(struct mf_problems *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		free(p->v[i].image);
		free(p->v[i].overlay);
		free(p->v[i].msg);
	}
	free(p->v);
	free(p->file);
	memset(p, 0, sizeof(*p));
}

char *mf_problem_message(const struct mf_problems *p, size_t i)
{
	const struct mf_problem *pr = &p->v[i];
	char q[MF_QUOTE_MAX];
	char *s = NULL;
	if (!pr->image && !pr->overlay)
		return strdup(pr->msg);
	mf_quote(q, pr->image ? pr->image : pr->overlay);
	if (asprintf(&s, "%s %s: %s", pr->image ? "image" : "overlay", q, pr->msg) < 0)
		return NULL;
	return s;
}

char *mf_problem_format(const struct mf_problems *p, size_t i)
{
	const struct mf_problem *pr = &p->v[i];
	char *msg = mf_problem_message(p, i), *s = NULL;
	if (msg && asprintf(&s, "%s:%d:%d: %s", mf_problems_file(p), pr->line, pr->col, msg) < 0)
		s = NULL;
	free(msg);
	return s;
}

const char *mf_problems_file(const struct mf_problems *p)
{
	return p->file ? p->file : "<manifest>";
}

void mf_problems_print(FILE *f, const struct mf_problems *p)
{
	for (size_t i = 0; i < p->n; i++) {
		char *s = mf_problem_format(p, i);
		if (s) {
			fprintf(f, "%s\n", s);
			free(s);
		}
	}
}

struct ordered {
	struct mf_problem pr;
	size_t seq;
};

static int cmp_ordered(const void *a, const void *b)
{
	const struct ordered *x = a, *y = b;
	if (x->pr.line != y->pr.line)
		return x->pr.line < y->pr.line ? -1 : 1;
	if (x->pr.col != y->pr.col)
		return x->pr.col < y->pr.col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Document order; problems at the same place keep the order found. */
int mf_problems_sort(struct mf_problems *p)
{
	struct ordered *o;
	if (p->n < 2)
		return 0;
	o = malloc(p->n * sizeof(*o));
	if (!o)
		return -1;
	for (size_t i = 0; i < p->n; i++) {
		o[i].pr = p->v[i];
		o[i].seq = i;
	}
	qsort(o, p->n, sizeof(*o), cmp_ordered);
	for (size_t i = 0; i < p->n; i++)
		p->v[i] = o[i].pr;
	free(o);
	return 0;
}

/* ---- YAML access ------------------------------------------------------- */

static char *xstrdup(struct ctx *c, const char *s)
{
	char *d;
	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		c->oom = 1;
	return d;
}

static void *xcalloc(struct ctx *c, size_t n, size_t size)
{
	void *p;
	if (!n)
		return NULL;
	p = calloc(n, size);
	if (!p)
		c->oom = 1;
	return p;
}

static int is_null(const struct yt_node *n)
{
	return n->type == YT_SCALAR && n->is_null;
}

static const char *type_name(const struct yt_node *n)
{
	switch (n->type) {
	case YT_MAP: return "a mapping";
	case YT_SEQ: return "a list";
	case YT_SCALAR: break;
	}
	return n->is_null ? "empty" : "a string";
}

/* The value of key in map (its first occurrence), or NULL. */
static const struct yt_node *get(const struct yt_node *map, const char *key)
{
	size_t l = strlen(key);
	if (!map || map->type != YT_MAP)
		return NULL;
	for (size_t i = 0; i + 1 < map->nkids; i += 2) {
		const struct yt_node *k = map->kids[i];
		if (k->type == YT_SCALAR && k->len == l && !memcmp(k->str, key, l))
			return map->kids[i + 1];
	}
	return NULL;
}

struct moved {
	const char *key, *parent;
};

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

/* Report unknown, duplicate and non-string keys of map.  in names the
 * mapping in messages (NULL at the top of the manifest or of an entry);
 * moved lists keys that belong one level down. */
static void check_keys(struct ctx *c, const struct yt_node *map, const char *in,
                       const char *const *known, size_t nknown, const struct moved *moved)
{
	const struct yt_node *first[8] = {NULL};
	char ins[96] = "";
	if (in)
		snprintf(ins, sizeof(ins), " in %s", in);
	for (size_t i = 0; i + 1 < map->nkids; i += 2) {
		const struct yt_node *k = map->kids[i];
		char q[MF_QUOTE_MAX];
		const char *sugg;
		size_t j;
		if (k->type != YT_SCALAR) {
			problem(c, k, "a key%s is %s; keys must be plain names, like \"name:\"",
			        ins, type_name(k));
			continue;
		}
		for (j = 0; j < nknown; j++)
			if (k->len == strlen(known[j]) && !strcmp(k->str, known[j]))
				break;
		mf_quote(q, k->str);
		if (j < nknown) {
			if (first[j])
				problem(c, k,
				        "duplicate key %s%s (first at line %d); remove one of them",
				        q, ins, first[j]->line);
			else
				first[j] = k;
			continue;
		}
		if (!strcmp(k->str, "<<")) {
			problem(c, k, "merge keys (\"<<\") are not supported%s; write the keys out",
			        ins);
			continue;
		}
		for (j = 0; moved && moved[j].key; j++)
			if (!strcmp(k->str, moved[j].key))
				break;
		if (moved && moved[j].key) {
			problem(c, k, "unknown key %s%s; it belongs under \"%s:\"", q, ins,
			        moved[j].parent);
			continue;
		}
		sugg = mf_closest(k->str, known, nknown);
		if (sugg) {
			problem(c, k, "unknown key %s%s; did you mean \"%s\"?", q, ins, sugg);
		} else {
			char list[256] = "";
			for (j = 0; j < nknown; j++) {
				strcat(list, j ? ", " : "");
				strcat(list, known[j]);
			}
			problem(c, k, "unknown key %s%s; remove it (known keys: %s)", q, ins, list);
		}
	}
}

/* A string field: its value, or NULL when absent or null (reported when
 * missing, the hint for a missing value, is given), when of another type or
 * holding a NUL (reported).  Empty strings are refused unless allow_empty. */
static const char *want_str(struct ctx *c, const struct yt_node *map, const char *key,
                            const char *what, const char *missing, int allow_empty,
                            const struct yt_node **node)
{
	const struct yt_node *v = get(map, key);
	*node = v;
	if (!v) {
		if (missing)
			problem(c, map, "%s is missing; %s", what, missing);
		return NULL;
	}
	if (is_null(v)) {
		if (missing)
			problem(c, v, "%s is empty; %s", what, missing);
		return NULL;
	}
	if (v->type != YT_SCALAR) {
		problem(c, v, "%s is %s but must be a string; write one value after \"%s:\"", what,
		        type_name(v), key);
		return NULL;
	}
	if (memchr(v->str, '\0', v->len)) {
		problem(c, v, "%s contains a NUL character; remove it", what);
		return NULL;
	}
	if (!v->len && !allow_empty) {
		problem(c, v, "%s is empty; %s", what,
		        missing ? missing : "give it a value or remove the key");
		return NULL;
	}
	return v->str;
}

/* A mapping or list field (want = YT_MAP or YT_SEQ): NULL when absent or
 * null (reported when missing is given) or of another type (reported). */
static const struct yt_node *want_node(struct ctx *c, const struct yt_node *map, const char *key,
                                       const char *what, enum yt_type want, const char *missing,
                                       const char *hint)
{
	const struct yt_node *v = get(map, key);
	if (!v) {
		if (missing)
			problem(c, map, "%s is missing; %s", what, missing);
		return NULL;
	}
	if (is_null(v)) {
		if (missing)
			problem(c, v, "%s is empty; %s", what, missing);
		return NULL;
	}
	if (v->type != want) {
		problem(c, v, "%s is %s but must be %s; %s", what, type_name(v),
		        want == YT_MAP ? "a mapping" : "a list", hint);
		return NULL;
	}
	return v;
}

/* Report a rule's verdict; returns the rule's result. */
static int rule(struct ctx *c, const struct yt_node *at, int rc, const char *why)
{
	if (rc)
		problem(c, at, "%s", why);
	return rc;
}

/* ---- the walk ---------------------------------------------------------- */

static const char *const root_keys[] = {"apiVersion", "kind", "metadata", "spec"};
static const struct moved root_moved[] = {
        {"images", "spec"}, {"overlays", "spec"}, {"name", "metadata"}, {NULL, NULL}};
static const char *const metadata_keys[] = {"name"};
static const char *const spec_keys[] = {"images", "overlays", "retention", "uploads"};
static const char *const image_keys[] = {"name",       "source",     "destination",
                                         "validation", "updateFile", "retention"};
static const char *const retention_keys[] = {"keepVersions", "keepDays"};
static const char *const upload_rule_keys[] = {"prefix", "keep", "keepDays"};
static const struct moved image_moved[] = {{"url", "source"},
                                           {"checksum", "source"},
                                           {"decompress", "source"},
                                           {"algorithm", "validation"},
                                           {"expected", "validation"},
                                           {"path", "updateFile"},
                                           {"replacements", "updateFile"},
                                           {NULL, NULL}};
static const char *const source_keys[] = {"url", "checksum", "decompress"};
static const char *const validation_keys[] = {"algorithm", "expected"};
static const char *const update_keys[] = {"path", "replacements"};
static const char *const replacement_keys[] = {"pattern", "value"};
static const char *const overlay_keys[] = {"name",    "base",     "output",
                                           "variant", "packages", "services"};

static const char *const decompress_names[] = {"none", "xz", "gzip", "zstd"};

const char *mf_decompress_name(enum mf_decompress d)
{
	return (unsigned)d < NKEYS(decompress_names) ? decompress_names[d] : "?";
}

/* The nodes of one field of every image or overlay (NULL: no usable value). */
struct entries {
	const struct yt_node **name, **dest;   /* images */
	const struct yt_node **base, **output; /* overlays (and name) */
	long *base_idx;                        /* overlays: the image of base, or -1 */
};

static void walk_update(struct ctx *c, const struct yt_node *n, const char *what,
                        struct mf_update_file *uf)
{
	const struct yt_node *v, *reps;
	char w[96], why[MF_WHY_MAX];
	const char *s;

	uf->pos.line = n->line;
	uf->pos.col = n->col;
	if (n->type != YT_MAP) {
		problem(c, n,
		        "%s is %s but must be a mapping; write path: and replacements: under it",
		        what, type_name(n));
		return;
	}
	check_keys(c, n, what, update_keys, NKEYS(update_keys), NULL);
	snprintf(w, sizeof(w), "%s.path", what);
	s = want_str(c, n, "path", w,
	             "write \"path: FILE\" (relative to the repository root) under updateFile:", 0,
	             &v);
	if (s) {
		uf->path = xstrdup(c, s);
		rule(c, v, mf_rule_repo_path(w, s, why, sizeof(why)), why);
	}
	snprintf(w, sizeof(w), "%s.replacements", what);
	reps = want_node(c, n, "replacements", w, YT_SEQ,
	                 "write \"replacements:\" with a \"- pattern: REGEX\" and its \"value: "
	                 "TEXT\"",
	                 "write each replacement as \"- pattern: REGEX\" with \"value: TEXT\" "
	                 "under it");
	if (!reps)
		return;
	if (!reps->nkids) {
		problem(c, reps,
		        "%s is empty; add at least one \"- pattern: REGEX\" with its \"value: "
		        "TEXT\"",
		        w);
		return;
	}
	uf->replacements = xcalloc(c, reps->nkids, sizeof(*uf->replacements));
	if (!uf->replacements)
		return;
	uf->nreplacements = reps->nkids;
	for (size_t i = 0; i < reps->nkids; i++) {
		const struct yt_node *r = reps->kids[i];
		struct mf_replacement *rep = &uf->replacements[i];
		char rw[128], fw[144];
		snprintf(rw, sizeof(rw), "%s.replacements[%zu]", what, i);
		rep->pos.line = r->line;
		rep->pos.col = r->col;
		if (r->type != YT_MAP) {
			problem(c, r,
			        "%s is %s but must be a mapping; write \"- pattern: REGEX\" with "
			        "\"value: TEXT\" under it",
			        rw, type_name(r));
			continue;
		}
		check_keys(c, r, rw, replacement_keys, NKEYS(replacement_keys), NULL);
		snprintf(fw, sizeof(fw), "%s.pattern", rw);
		s = want_str(c, r, "pattern", fw,
		             "write \"pattern: REGEX\" (in single quotes, so that \\ stays as is)",
		             0, &v);
		if (s) {
			rep->pattern = xstrdup(c, s);
			if (mf_regex_compile(fw, s, NULL, why, sizeof(why))) {
				if (!strcmp(why, "out of memory"))
					c->oom = 1;
				else
					problem(c, v, "%s", why);
			}
		}
		snprintf(fw, sizeof(fw), "%s.value", rw);
		s = want_str(c, r, "value", fw,
		             "write \"value: TEXT\" (value: \"\" deletes what the pattern matches)",
		             1, &v);
		if (s) {
			rep->value = xstrdup(c, s);
			if (mf_template_check(fw, s, why, sizeof(why))) {
				if (!strcmp(why, "out of memory"))
					c->oom = 1;
				else
					problem(c, v, "%s", why);
			}
		}
	}
}

/* A count (keepVersions, keepDays, keep) in map: 1 and *out set when given
 * and valid, 0 when absent (or reported). */
static int want_count(struct ctx *c, const struct yt_node *map, const char *key, const char *what,
                      long *out)
{
	const struct yt_node *v;
	const char *s = want_str(c, map, key, what, NULL, 0, &v);
	long n = 0;
	if (!s)
		return 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9' || n > MF_MAX_KEEP) {
			char q[MF_QUOTE_MAX];
			mf_quote(q, s);
			problem(c, v, "%s is %s; write a whole number from 0 to %d", what, q,
			        MF_MAX_KEEP);
			return 0;
		}
		n = n * 10 + (*p - '0');
	}
	if (n > MF_MAX_KEEP) {
		problem(c, v, "%s is %ld; write a whole number from 0 to %d", what, n, MF_MAX_KEEP);
		return 0;
	}
	*out = n;
	return 1;
}

/* A retention mapping (spec.retention or an image's): the keys it names
 * replace those in *r; the others stay as they are. */
static void walk_retention(struct ctx *c, const struct yt_node *map, const char *in,
                           struct mf_retention *r)
{
	char what[64];
	const struct yt_node *v = want_node(c, map, "retention", in, YT_MAP, NULL,
	                                    "write keepVersions: and keepDays: under retention:");
	if (!v)
		return;
	check_keys(c, v, in, retention_keys, NKEYS(retention_keys), NULL);
	snprintf(what, sizeof(what), "%s.keepVersions", in);
	want_count(c, v, "keepVersions", what, &r->keep_versions);
	snprintf(what, sizeof(what), "%s.keepDays", in);
	want_count(c, v, "keepDays", what, &r->keep_days);
}

/* spec.uploads: the rules that let prune delete upload images. */
static void walk_uploads(struct ctx *c, const struct yt_node *spec, struct manifest *m)
{
	const struct yt_node *seq = want_node(
	        c, spec, "uploads", "spec.uploads", YT_SEQ, NULL,
	        "write each rule as \"- prefix: DIR/\" with keep: and keepDays: under it");
	if (!seq || !seq->nkids)
		return;
	m->uploads = xcalloc(c, seq->nkids, sizeof(*m->uploads));
	if (!m->uploads)
		return;
	m->nuploads = seq->nkids;
	for (size_t i = 0; i < seq->nkids; i++) {
		const struct yt_node *n = seq->kids[i], *pv;
		struct mf_upload_rule *u = &m->uploads[i];
		char what[64];
		const char *s;
		int given = 0;
		u->pos.line = n->line;
		u->pos.col = n->col;
		if (n->type != YT_MAP) {
			problem(c, n,
			        "spec.uploads[%zu] is %s but must be a mapping; write \"- prefix: "
			        "DIR/\" with keep: and keepDays: under it",
			        i, type_name(n));
			continue;
		}
		snprintf(what, sizeof(what), "spec.uploads[%zu]", i);
		check_keys(c, n, what, upload_rule_keys, NKEYS(upload_rule_keys), NULL);
		snprintf(what, sizeof(what), "spec.uploads[%zu].prefix", i);
		s = want_str(c, n, "prefix", what,
		             "write \"prefix: DIR/\" (destinations of labctl images upload)", 0,
		             &pv);
		if (s) {
			u->prefix = xstrdup(c, s);
			/* a prefix is the start of a destination: the same characters */
			if (s[0] == '/' || strchr(s, '\\') || strstr(s, "//"))
				problem(c, pv,
				        "%s must be the start of a destination, like \"vyos/\" (no "
				        "leading \"/\", no \"//\", no backslash)",
				        what);
			else
				for (const char *p = s; *p; p++)
					if ((unsigned char)*p < 0x20 || *p == 0x7f) {
						problem(c, pv,
						        "%s contains a control character; remove "
						        "it",
						        what);
						break;
					}
			for (size_t j = 0; j < i; j++)
				if (m->uploads[j].prefix && !strcmp(m->uploads[j].prefix, s))
					problem(c, pv,
					        "%s repeats the prefix of spec.uploads[%zu] (line "
					        "%d); "
					        "merge the two rules",
					        what, j, m->uploads[j].pos.line);
		}
		snprintf(what, sizeof(what), "spec.uploads[%zu].keep", i);
		given += want_count(c, n, "keep", what, &u->keep);
		snprintf(what, sizeof(what), "spec.uploads[%zu].keepDays", i);
		given += want_count(c, n, "keepDays", what, &u->keep_days);
		if (!given && !get(n, "keep") && !get(n, "keepDays"))
			problem(c, n,
			        "spec.uploads[%zu] says neither keep: nor keepDays:; write how "
			        "many "
			        "uploads stay (keep: N) and/or for how many days (keepDays: N)",
			        i);
	}
}

const struct mf_upload_rule *manifest_upload_rule(const struct manifest *m, const char *dest)
{
	const struct mf_upload_rule *best = NULL;
	for (size_t i = 0; i < m->nuploads; i++) {
		const char *p = m->uploads[i].prefix;
		if (p && !strncmp(dest, p, strlen(p)) &&
		    (!best || strlen(p) > strlen(best->prefix)))
			best = &m->uploads[i];
	}
	return best;
}

/* Walk spec.images[idx]; *name_node and *dest_node are set to the name and
 * destination when usable for the checks across images (else NULL). */
static void walk_image(struct ctx *c, const struct yt_node *n, size_t idx, struct mf_image *img,
                       const struct yt_node **name_node, const struct yt_node **dest_node)
{
	const struct yt_node *src, *val, *v, *dec_node = NULL, *alg_node = NULL, *exp_node = NULL;
	const struct yt_node *nn = get(n, "name");
	enum hash_alg salg = HASH_SHA256, ealg = HASH_SHA256, aalg = HASH_SHA256;
	enum mf_decompress dec = MF_DECOMPRESS_NONE;
	int src_ok = 0, exp_ok = 0, alg_given = 0;
	char why[MF_WHY_MAX], q[MF_QUOTE_MAX];
	const char *s;

	img->pos.line = n->line;
	img->pos.col = n->col;
	*name_node = *dest_node = NULL;
	subject_none(c);
	if (n->type != YT_MAP) {
		problem(c, n,
		        "spec.images[%zu] is %s but must be a mapping; write each image as \"- "
		        "name: "
		        "NAME\" with its keys under it",
		        idx, type_name(n));
		return;
	}
	subject_entry(c, "images", idx,
	              nn && nn->type == YT_SCALAR && !nn->is_null && !memchr(nn->str, 0, nn->len)
	                      ? nn->str
	                      : NULL);
	check_keys(c, n, NULL, image_keys, NKEYS(image_keys), image_moved);

	s = want_str(c, n, "name", "name", "write \"name: NAME\" (unique among the images)", 0,
	             name_node);
	if (s) {
		img->name = xstrdup(c, s);
		rule(c, *name_node, mf_rule_name("name", s, why, sizeof(why)), why);
	} else {
		*name_node = NULL;
	}

	src = want_node(c, n, "source", "source", YT_MAP,
	                "write \"source:\" with url: and checksum: under it",
	                "write url:, checksum: and decompress: under source:");
	if (src) {
		check_keys(c, src, "source", source_keys, NKEYS(source_keys), NULL);
		s = want_str(c, src, "url", "source.url",
		             "write \"url: https://HOST/PATH\" under source:", 0, &v);
		if (s) {
			img->source.url = xstrdup(c, s);
			rule(c, v, mf_rule_url("source.url", s, why, sizeof(why)), why);
		}
		s = want_str(c, src, "checksum", "source.checksum",
		             "write \"checksum: sha256:<64 hex digits>\" under source:", 0, &v);
		if (s) {
			img->source.checksum = xstrdup(c, s);
			src_ok = !rule(
			        c, v,
			        mf_rule_checksum("source.checksum", s, &salg, why, sizeof(why)),
			        why);
		}
		s = want_str(c, src, "decompress", "source.decompress", NULL, 0, &dec_node);
		if (s) {
			size_t d;
			for (d = 0; d < NKEYS(decompress_names); d++)
				if (!strcmp(s, decompress_names[d]))
					break;
			if (d < NKEYS(decompress_names)) {
				dec = (enum mf_decompress)d;
			} else {
				mf_quote(q, s);
				problem(c, dec_node,
				        "source.decompress is %s; use xz, gzip, zstd or none", q);
			}
		}
	}

	s = want_str(c, n, "destination", "destination",
	             "write \"destination: DIR/FILE\" (the image's path in the bucket)", 0,
	             dest_node);
	if (s) {
		img->destination = xstrdup(c, s);
		if (rule(c, *dest_node, mf_rule_destination("destination", s, why, sizeof(why)),
		         why))
			*dest_node = NULL; /* no duplicate checks on a bad destination */
	} else {
		*dest_node = NULL;
	}

	val = want_node(c, n, "validation", "validation", YT_MAP, NULL,
	                "write algorithm: and expected: under validation:");
	if (val) {
		check_keys(c, val, "validation", validation_keys, NKEYS(validation_keys), NULL);
		s = want_str(c, val, "algorithm", "validation.algorithm", NULL, 0, &alg_node);
		if (s) {
			if (hash_alg_parse(s, &aalg)) {
				mf_quote(q, s);
				problem(c, alg_node,
				        "validation.algorithm is %s; use sha256 or sha512", q);
			} else {
				alg_given = 1;
			}
		}
		s = want_str(c, val, "expected", "validation.expected", NULL, 0, &exp_node);
		if (s) {
			img->validation.expected = xstrdup(c, s);
			exp_ok = !rule(
			        c, exp_node,
			        mf_rule_checksum("validation.expected", s, &ealg, why, sizeof(why)),
			        why);
		}
	}

	/* Consistency of source, decompression and validation. */
	if (dec != MF_DECOMPRESS_NONE && (!exp_node || is_null(exp_node)))
		problem(c, dec_node,
		        "source.decompress is %s but validation.expected is missing; add "
		        "validation.expected: the checksum of the decompressed image",
		        mf_decompress_name(dec));
	if (alg_given && exp_ok && aalg != ealg)
		problem(c, alg_node,
		        "validation.algorithm is %s but validation.expected is a %s checksum; make "
		        "them agree",
		        hash_alg_name(aalg), hash_alg_name(ealg));
	else if (alg_given && !exp_node && src_ok && dec == MF_DECOMPRESS_NONE && aalg != salg)
		problem(c, alg_node,
		        "validation.algorithm is %s but source.checksum is a %s checksum; make "
		        "them "
		        "agree (or add validation.expected)",
		        hash_alg_name(aalg), hash_alg_name(salg));
	if (exp_ok && src_ok && dec == MF_DECOMPRESS_NONE && ealg == salg &&
	    strcasecmp(img->validation.expected, img->source.checksum))
		problem(c, exp_node,
		        "validation.expected differs from source.checksum, but nothing is "
		        "decompressed (the stored bytes are the downloaded bytes); correct one of "
		        "them or remove validation.expected");
	img->source.decompress = dec;
	img->validation.algorithm = alg_given ? aalg : exp_ok ? ealg : salg;
	/* -1: not named here, spec.retention applies (walk_root) */
	img->retention.keep_versions = img->retention.keep_days = -1;
	walk_retention(c, n, "retention", &img->retention);

	v = get(n, "updateFile");
	if (v && !is_null(v)) {
		if (v->type == YT_MAP) {
			img->update_files = xcalloc(c, 1, sizeof(*img->update_files));
			if (img->update_files) {
				img->nupdate_files = 1;
				walk_update(c, v, "updateFile", img->update_files);
			}
		} else if (v->type == YT_SEQ) {
			img->update_files = xcalloc(c, v->nkids, sizeof(*img->update_files));
			if (img->update_files)
				img->nupdate_files = v->nkids;
			for (size_t i = 0; img->update_files && i < v->nkids; i++) {
				char w[48];
				snprintf(w, sizeof(w), "updateFile[%zu]", i);
				walk_update(c, v->kids[i], w, &img->update_files[i]);
			}
		} else {
			problem(c, v,
			        "updateFile is %s but must be a mapping (or a list of them); write "
			        "path: "
			        "and replacements: under updateFile:",
			        type_name(v));
		}
	}
	subject_none(c);
}

static char **str_list(struct ctx *c, const struct yt_node *map, const char *key, size_t *n)
{
	const struct yt_node *v = want_node(c, map, key, key, YT_SEQ, NULL,
	                                    "write [a, b] or one \"- item\" per line");
	char **list;
	*n = 0;
	if (!v || !v->nkids)
		return NULL;
	list = xcalloc(c, v->nkids, sizeof(*list));
	if (!list)
		return NULL;
	*n = v->nkids;
	for (size_t i = 0; i < v->nkids; i++) {
		const struct yt_node *it = v->kids[i];
		if (it->type != YT_SCALAR)
			problem(c, it,
			        "%s[%zu] is %s but must be a string; write one name per entry", key,
			        i, type_name(it));
		else if (it->is_null || !it->len)
			problem(c, it, "%s[%zu] is empty; remove it or write a name", key, i);
		else if (memchr(it->str, '\0', it->len))
			problem(c, it, "%s[%zu] contains a NUL character; remove it", key, i);
		else
			list[i] = xstrdup(c, it->str);
	}
	return list;
}

/* Walk spec.overlays[idx]; entry i of ov gets its usable name, base and output. */
static void walk_overlay(struct ctx *c, const struct yt_node *n, size_t idx, struct mf_overlay *o,
                         const struct entries *ov)
{
	const struct yt_node *nn = get(n, "name"), *v;
	char why[MF_WHY_MAX];
	const char *s;

	o->pos.line = n->line;
	o->pos.col = n->col;
	ov->name[idx] = ov->base[idx] = ov->output[idx] = NULL;
	ov->base_idx[idx] = -1;
	subject_none(c);
	if (n->type != YT_MAP) {
		problem(c, n,
		        "spec.overlays[%zu] is %s but must be a mapping; write each overlay as \"- "
		        "name: NAME\" with base: and output: under it",
		        idx, type_name(n));
		return;
	}
	subject_entry(c, "overlays", idx,
	              nn && nn->type == YT_SCALAR && !nn->is_null && !memchr(nn->str, 0, nn->len)
	                      ? nn->str
	                      : NULL);
	check_keys(c, n, NULL, overlay_keys, NKEYS(overlay_keys), NULL);
	s = want_str(c, n, "name", "name", "write \"name: NAME\" (unique among the overlays)", 0,
	             &ov->name[idx]);
	if (s) {
		o->name = xstrdup(c, s);
		rule(c, ov->name[idx], mf_rule_name("name", s, why, sizeof(why)), why);
	} else {
		ov->name[idx] = NULL;
	}
	s = want_str(c, n, "base", "base",
	             "write \"base: DESTINATION\" (the destination of a qcow2 image of "
	             "spec.images)",
	             0, &ov->base[idx]);
	if (s)
		o->base = xstrdup(c, s);
	else
		ov->base[idx] = NULL;
	s = want_str(c, n, "output", "output",
	             "write \"output: NAME.qcow2\" (a file name inside --overlay-dir)", 0,
	             &ov->output[idx]);
	if (s) {
		o->output = xstrdup(c, s);
		if (rule(c, ov->output[idx], mf_rule_output("output", s, why, sizeof(why)), why))
			ov->output[idx] = NULL;
	} else {
		ov->output[idx] = NULL;
	}
	s = want_str(c, n, "variant", "variant", NULL, 0, &v);
	if (s)
		o->variant = xstrdup(c, s);
	o->packages = str_list(c, n, "packages", &o->npackages);
	o->services = str_list(c, n, "services", &o->nservices);
	subject_none(c);
}

/* ---- checks across entries --------------------------------------------- */

struct keyed {
	const char *key;
	size_t idx;
};

static int cmp_keyed(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	int r = strcmp(x->key, y->key);
	if (r)
		return r;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* The lowest idx with this key in a sorted array, or -1. */
static long find_keyed(const struct keyed *v, size_t n, const char *key)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(v[mid].key, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && !strcmp(v[lo].key, key) ? (long)v[lo].idx : -1;
}

/* The values of nodes[0..n) (NULL ones skipped), sorted, with their index. */
static struct keyed *sorted(struct ctx *c, const struct yt_node *const *nodes, size_t n,
                            size_t *count)
{
	struct keyed *v = xcalloc(c, n ? n : 1, sizeof(*v));
	size_t k = 0;
	*count = 0;
	if (!v)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (nodes[i]) {
			v[k].key = nodes[i]->str;
			v[k].idx = i;
			k++;
		}
	}
	qsort(v, k, sizeof(*v), cmp_keyed);
	*count = k;
	return v;
}

static const char *entry_name(const struct manifest *m, const char *kind, size_t idx)
{
	return kind[0] == 'i' ? m->images[idx].name : m->overlays[idx].name;
}

/* Report every use of a value after its first (v sorted, nodes by entry). */
static void report_dups(struct ctx *c, const struct manifest *m, const char *kind,
                        const struct keyed *v, size_t n, const struct yt_node *const *nodes,
                        const char *what, const char *fix)
{
	char q[MF_QUOTE_MAX];
	size_t start = 0;
	for (size_t i = 1; i < n; i++) {
		if (strcmp(v[i].key, v[start].key)) {
			start = i;
			continue;
		}
		const struct yt_node *at = nodes[v[i].idx], *first = nodes[v[start].idx];
		const struct mf_pos *entry =
		        kind[0] == 'i' ? &m->images[v[i].idx].pos : &m->overlays[v[i].idx].pos;
		subject_entry(c, kind, v[i].idx, entry_name(m, kind, v[i].idx));
		mf_quote(q, v[i].key);
		/* The same node twice: the entry is (or holds) an alias; point at it. */
		problem_at(c, at == first ? entry->line : at->line,
		           at == first ? entry->col : at->col,
		           "%s %s is already used by the %s at line %d; %s", what, q,
		           kind[0] == 'i' ? "image" : "overlay", first->line, fix);
	}
	subject_none(c);
}

static void check_images(struct ctx *c, const struct manifest *m, const struct entries *im,
                         struct keyed **dests_out, size_t *nd, struct keyed **names_out, size_t *nn)
{
	struct keyed *names = sorted(c, im->name, m->nimages, nn);
	struct keyed *dests = sorted(c, im->dest, m->nimages, nd);
	char q[MF_QUOTE_MAX], q2[MF_QUOTE_MAX];

	*dests_out = dests;
	*names_out = names;
	if (!names || !dests)
		return;
	report_dups(c, m, "images", names, *nn, im->name, "name", "give each image a unique name");
	report_dups(c, m, "images", dests, *nd, im->dest, "destination",
	            "give each image its own destination");
	/* A destination must not be a directory of another one ("a" and "a/b"). */
	for (size_t i = 0; i < m->nimages; i++) {
		const struct yt_node *d = im->dest[i];
		for (const char *p = d ? strchr(d->str, '/') : NULL; p; p = strchr(p + 1, '/')) {
			char *prefix = strndup(d->str, (size_t)(p - d->str));
			long j;
			if (!prefix) {
				c->oom = 1;
				break;
			}
			j = find_keyed(dests, *nd, prefix);
			if (j >= 0) {
				subject_entry(c, "images", i, m->images[i].name);
				mf_quote(q, d->str);
				mf_quote(q2, prefix);
				problem(c, d,
				        "destination %s puts a file under %s, which is the "
				        "destination of "
				        "the image at line %d; rename one of them",
				        q, q2, im->dest[j]->line);
			}
			free(prefix);
			if (j >= 0)
				break;
		}
	}
	subject_none(c);
}

static int ends_with(const char *s, const char *suffix)
{
	size_t l = strlen(s), ls = strlen(suffix);
	return l >= ls && !strcmp(s + l - ls, suffix);
}

/* base names an image: by destination, else by name; it must be a qcow2. */
static void check_base(struct ctx *c, const struct manifest *m, size_t i, const struct yt_node *b,
                       const struct keyed *dests, size_t nd, const struct keyed *names, size_t nn,
                       long *base_idx)
{
	char q[MF_QUOTE_MAX], q2[MF_QUOTE_MAX];
	const struct mf_image *img;
	long j = find_keyed(dests, nd, b->str);
	int by_name = 0;

	subject_entry(c, "overlays", i, m->overlays[i].name);
	mf_quote(q, b->str);
	if (j < 0) {
		j = find_keyed(names, nn, b->str);
		by_name = 1;
	}
	if (j < 0) {
		const char **cands = xcalloc(c, nd ? nd : 1, sizeof(*cands));
		const char *sugg = NULL;
		size_t k = 0;
		for (size_t d = 0; cands && d < nd; d++)
			if (ends_with(dests[d].key, ".qcow2"))
				cands[k++] = dests[d].key;
		if (cands)
			sugg = mf_closest(b->str, cands, k);
		if (sugg) {
			mf_quote(q2, sugg);
			problem(c, b,
			        "base %s is not the destination of any image; did you mean %s?", q,
			        q2);
		} else {
			problem(c, b,
			        "base %s is not the destination of any image; use the destination "
			        "of a "
			        "qcow2 image of spec.images",
			        q);
		}
		free(cands);
		return;
	}
	img = &m->images[j];
	if (!img->destination)
		return;
	*base_idx = j;
	if (ends_with(img->destination, ".qcow2"))
		return;
	mf_quote(q2, img->destination);
	if (by_name)
		problem(c, b,
		        "base %s is an image whose destination %s is not a .qcow2 file; overlays "
		        "need a qcow2 base",
		        q, q2);
	else
		problem(c, b,
		        "base %s is not a .qcow2 file; overlays need the destination of a qcow2 "
		        "image",
		        q);
}

static void check_overlays(struct ctx *c, const struct manifest *m, const struct entries *ov,
                           const struct keyed *dests, size_t nd, const struct keyed *names,
                           size_t nn)
{
	size_t kn = 0, ko = 0;
	struct keyed *onames = sorted(c, ov->name, m->noverlays, &kn);
	struct keyed *outputs = sorted(c, ov->output, m->noverlays, &ko);

	if (onames && outputs && dests && names) {
		report_dups(c, m, "overlays", onames, kn, ov->name, "name",
		            "give each overlay a unique name");
		report_dups(c, m, "overlays", outputs, ko, ov->output, "output",
		            "give each overlay its own output");
		for (size_t i = 0; i < m->noverlays; i++)
			if (ov->base[i])
				check_base(c, m, i, ov->base[i], dests, nd, names, nn,
				           &ov->base_idx[i]);
	}
	subject_none(c);
	free(onames);
	free(outputs);
}

/* ---- root -------------------------------------------------------------- */

static void walk_root(struct ctx *c, const struct yt_node *root, struct manifest *m)
{
	const struct yt_node *v, *meta, *spec, *images = NULL, *overlays = NULL;
	struct entries im = {NULL, NULL, NULL, NULL, NULL}, ov = {NULL, NULL, NULL, NULL, NULL};
	struct keyed *dests = NULL, *names = NULL;
	size_t nd = 0, nn = 0;
	char q[MF_QUOTE_MAX];
	const char *s;

	if (!root || is_null(root)) {
		problem_at(c, root ? root->line : 1, root ? root->col : 1,
		           "the manifest is empty; start it with \"apiVersion: " MF_API_VERSION
		           "\"");
		return;
	}
	if (root->type != YT_MAP) {
		problem(c, root,
		        "the manifest is %s but must be a mapping; start it with "
		        "\"apiVersion: " MF_API_VERSION "\"",
		        type_name(root));
		return;
	}
	check_keys(c, root, NULL, root_keys, NKEYS(root_keys), root_moved);
	s = want_str(c, root, "apiVersion", "apiVersion",
	             "write \"apiVersion: " MF_API_VERSION "\"", 0, &v);
	if (s && strcmp(s, MF_API_VERSION)) {
		mf_quote(q, s);
		problem(c, v, "apiVersion is %s; set it to \"" MF_API_VERSION "\"", q);
	}
	s = want_str(c, root, "kind", "kind", "write \"kind: " MF_KIND "\"", 0, &v);
	if (s && strcmp(s, MF_KIND)) {
		mf_quote(q, s);
		problem(c, v, "kind is %s; set it to \"" MF_KIND "\"", q);
	}
	meta = want_node(c, root, "metadata", "metadata", YT_MAP,
	                 "write \"metadata:\" with \"name: NAME\" under it",
	                 "write \"name: NAME\" under metadata:");
	if (meta) {
		check_keys(c, meta, "metadata", metadata_keys, NKEYS(metadata_keys), NULL);
		s = want_str(c, meta, "name", "metadata.name",
		             "write \"name: NAME\" under metadata:", 0, &v);
		m->name = xstrdup(c, s);
	}
	spec = get(root, "spec");
	if (!spec) {
		problem(c, root, "spec is missing; write \"spec:\" with \"images:\" under it");
	} else if (!is_null(spec) && spec->type != YT_MAP) {
		problem(c, spec, "spec is %s but must be a mapping; write images: under spec:",
		        type_name(spec));
	} else if (spec->type == YT_MAP) {
		check_keys(c, spec, "spec", spec_keys, NKEYS(spec_keys), NULL);
		walk_retention(c, spec, "spec.retention", &m->retention);
		walk_uploads(c, spec, m);
		images = want_node(c, spec, "images", "spec.images", YT_SEQ, NULL,
		                   "write each image as \"- name: NAME\" with its keys under it");
		overlays =
		        want_node(c, spec, "overlays", "spec.overlays", YT_SEQ, NULL,
		                  "write each overlay as \"- name: NAME\" with base: and output: "
		                  "under it");
	}

	if (images && images->nkids) {
		size_t n = images->nkids;
		m->images = xcalloc(c, n, sizeof(*m->images));
		im.name = xcalloc(c, n, sizeof(*im.name));
		im.dest = xcalloc(c, n, sizeof(*im.dest));
		if (!m->images || !im.name || !im.dest)
			goto out;
		m->nimages = n;
		for (size_t i = 0; i < n; i++)
			walk_image(c, images->kids[i], i, &m->images[i], &im.name[i], &im.dest[i]);
	}
	if (overlays && overlays->nkids) {
		size_t n = overlays->nkids;
		m->overlays = xcalloc(c, n, sizeof(*m->overlays));
		ov.name = xcalloc(c, n, sizeof(*ov.name));
		ov.base = xcalloc(c, n, sizeof(*ov.base));
		ov.output = xcalloc(c, n, sizeof(*ov.output));
		ov.base_idx = xcalloc(c, n, sizeof(*ov.base_idx));
		if (!m->overlays || !ov.name || !ov.base || !ov.output || !ov.base_idx)
			goto out;
		m->noverlays = n;
		for (size_t i = 0; i < n; i++)
			walk_overlay(c, overlays->kids[i], i, &m->overlays[i], &ov);
	}
	for (size_t i = 0; i < m->nimages; i++) {
		struct mf_retention *r = &m->images[i].retention;
		if (r->keep_versions < 0)
			r->keep_versions = m->retention.keep_versions;
		if (r->keep_days < 0)
			r->keep_days = m->retention.keep_days;
	}
	check_images(c, m, &im, &dests, &nd, &names, &nn);
	check_overlays(c, m, &ov, dests, nd, names, nn);
	for (size_t i = 0; i < m->noverlays; i++)
		if (ov.base_idx[i] >= 0)
			m->overlays[i].base_image = &m->images[ov.base_idx[i]];
out:
	free(dests);
	free(names);
	free(im.name);
	free(im.dest);
	free(ov.name);
	free(ov.base);
	free(ov.output);
	free(ov.base_idx);
}

/* ---- loading ----------------------------------------------------------- */

static void free_update(struct mf_update_file *u)
{
	for (size_t i = 0; i < u->nreplacements; i++) {
		free(u->replacements[i].pattern);
		free(u->replacements[i].value);
	}
	free(u->replacements);
	free(u->path);
}

static void free_strings(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nimages; i++) {
		struct mf_image *img = &m->images[i];
		free(img->name);
		free(img->source.url);
		free(img->source.checksum);
		free(img->destination);
		free(img->validation.expected);
		for (size_t j = 0; j < img->nupdate_files; j++)
			free_update(&img->update_files[j]);
		free(img->update_files);
	}
	free(m->images);
	for (size_t i = 0; i < m->noverlays; i++) {
		struct mf_overlay *o = &m->overlays[i];
		free(o->name);
		free(o->base);
		free(o->output);
		free(o->variant);
		free_strings(o->packages, o->npackages);
		free_strings(o->services, o->nservices);
	}
	free(m->overlays);
	for (size_t i = 0; i < m->nuploads; i++)
		free(m->uploads[i].prefix);
	free(m->uploads);
	free(m->path);
	free(m->name);
	free(m);
}

int manifest_load_buffer(const void *data, size_t len, const char *label, struct manifest **out,
                         struct mf_problems *probs, struct err *e)
{
	struct mf_problems local = MF_PROBLEMS_INIT, *p = probs ? probs : &local;
	struct ctx c;
	struct manifest *m = NULL;
	struct yt_doc doc;
	struct yt_error yerr;
	int rc = -1;

	*out = NULL;
	mf_problems_free(p);
	memset(&c, 0, sizeof(c));
	c.probs = p;
	if (!label)
		label = "<manifest>";
	p->file = strdup(label);
	m = calloc(1, sizeof(*m));
	if (!p->file || !m || !(m->path = strdup(label)))
		goto oom;
	m->retention.keep_versions = MF_DEFAULT_KEEP_VERSIONS;
	if (len > MF_MAX_FILE_SIZE) {
		problem_at(&c, 1, 1, "the manifest is %zu bytes long; the limit is %u bytes", len,
		           MF_MAX_FILE_SIZE);
	} else if (yt_parse(data, len, &doc, &yerr)) {
		if (yerr.oom)
			goto oom;
		problem_at(&c, yerr.line, yerr.col, "%s", yerr.msg);
	} else {
		walk_root(&c, doc.root, m);
		yt_free(&doc);
	}
	if (c.oom || mf_problems_sort(p))
		goto oom;
	if (p->n) {
		err_set(e, ERR_INVALID, "%s: invalid manifest (%zu problem%s)", label, p->n,
		        p->n == 1 ? "" : "s");
		goto out;
	}
	*out = m;
	m = NULL;
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "%s: out of memory", label);
out:
	manifest_free(m);
	mf_problems_free(&local);
	return rc;
}

int manifest_load(const char *path, struct manifest **out, struct mf_problems *probs, struct err *e)
{
	struct buf b = BUF_INIT;
	struct stat st;
	int rc;

	*out = NULL;
	if (probs)
		mf_problems_free(probs);
	if (!stat(path, &st) && !S_ISREG(st.st_mode))
		return err_set(e, ERR_IO, "the manifest %s is not a regular file", path);
	if (file_read_all(path, MF_MAX_FILE_SIZE, &b, e)) {
		buf_free(&b);
		return err_prefix(e, "reading the manifest");
	}
	rc = manifest_load_buffer(b.data ? b.data : "", b.len, path, out, probs, e);
	buf_free(&b);
	return rc;
}

/* ---- look-ups ---------------------------------------------------------- */

const struct mf_image *manifest_find_image(const struct manifest *m, const char *name)
{
	for (size_t i = 0; i < m->nimages; i++)
		if (!strcmp(m->images[i].name, name))
			return &m->images[i];
	return NULL;
}

const struct mf_image *manifest_find_destination(const struct manifest *m, const char *dest)
{
	for (size_t i = 0; i < m->nimages; i++)
		if (!strcmp(m->images[i].destination, dest))
			return &m->images[i];
	return NULL;
}

const struct mf_overlay *manifest_find_overlay(const struct manifest *m, const char *name)
{
	for (size_t i = 0; i < m->noverlays; i++)
		if (!strcmp(m->overlays[i].name, name))
			return &m->overlays[i];
	return NULL;
}

const char *manifest_suggest_image(const struct manifest *m, const char *name)
{
	const char **names = calloc(m->nimages ? m->nimages : 1, sizeof(*names));
	const char *best;
	if (!names)
		return NULL;
	for (size_t i = 0; i < m->nimages; i++)
		names[i] = m->images[i].name;
	best = mf_closest(name, names, m->nimages);
	free(names);
	return best;
}

int manifest_repo_root(const char *manifest_path, char **out, struct err *e)
{
	char *copy = strdup(manifest_path), *real, *slash;
	*out = NULL;
	if (!copy)
		return err_set(e, ERR_IO, "out of memory");
	real = realpath(dirname(copy), NULL);
	if (!real) {
		err_errno(e, "finding the directory of the manifest %s", manifest_path);
		free(copy);
		return -1;
	}
	free(copy);
	slash = strrchr(real, '/');
	if (slash == real)
		real[1] = '\0'; /* the parent of "/x" (and of "/") is "/" */
	else if (slash)
		*slash = '\0';
	*out = real;
	return 0;
}

int mf_check_destination(const char *dest, struct err *e)
{
	char why[MF_WHY_MAX];
	if (mf_rule_destination("destination", dest, why, sizeof(why)))
		return err_set(e, ERR_INVALID, "%s", why);
	return 0;
}
