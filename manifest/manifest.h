/* The image manifest (images/images.yaml) as C structs, and its validation.
 *
 * Pure: manifest_load() reads the manifest file and nothing else; no network,
 * no S3, no other file.  Loading validates everything at once: a manifest
 * either loads completely valid, or not at all and every problem found is
 * listed in a struct mf_problems, each as
 *
 *     FILE:LINE:COLUMN: image "NAME": what is wrong; what to change
 *
 * ("image "NAME": " or "overlay "NAME": " only when the problem is inside a
 * named entry of spec.images / spec.overlays).
 *
 * Schema (apiVersion images.lab.gilman.io/v1alpha1, kind ImageManifest):
 *
 *   metadata: {name}                          name required
 *   spec:
 *     images:                                 optional; may be empty
 *       - name:          unique, no whitespace or control characters
 *         source:
 *           url:         https://HOST/... (no http, no user:password@)
 *           checksum:    sha256:<64 hex> | sha512:<128 hex>
 *           decompress:  xz | gzip | zstd | none (absent = none)
 *         destination:   unique relative path in the bucket (see
 *                        mf_check_destination)
 *         validation:                         optional
 *           algorithm:   sha256 | sha512, agrees with the effective checksum
 *           expected:    checksum of the stored (decompressed) bytes;
 *                        required when decompress is not none
 *         updateFile:                         optional; one mapping or a list
 *           path:        relative to the repo root, inside it, not in .git
 *           replacements:                     at least one
 *             - pattern: PCRE2 regex, RE2/Go style (\s, \d, (?i), (?P<n>...));
 *                        "$" is the end of the text unless (?m); must not
 *                        be able to match the empty string
 *               value:   text with {{ .Source.URL }}, {{ .Source.Checksum }},
 *                        {{ .Name }}, {{ .Destination }}
 *         retention: {keepVersions, keepDays}   optional; overrides the keys it
 *                        names of spec.retention for this image
 *     retention:                              optional
 *       keepVersions:    previous versions kept per destination (default 1)
 *       keepDays:        also keep those replaced less than N days ago (default 0)
 *     uploads:                                optional: what prune may delete of
 *       - prefix:        the `labctl images upload` images under this prefix
 *         keep:          the newest N by uploadedAt stay (default 0)
 *         keepDays:      and every one younger than N days (default 0);
 *                        keep or keepDays is required, prefixes are unique
 *                        (the longest matching prefix applies)
 *     overlays:                               optional
 *       - name:          unique
 *         base:          the destination (or the name) of an image of
 *                        spec.images whose destination ends in .qcow2
 *         output:        unique plain file name ending in .qcow2
 *         variant:       free text (optional)
 *         packages: [..], services: [..]      lists of strings (optional)
 *
 * Unknown keys are errors (with the closest known key suggested), so a typo
 * is never silently ignored.  YAML anchors and aliases work; "<<" merge keys
 * do not. */
#ifndef IMGSTORE_MANIFEST_MANIFEST_H
#define IMGSTORE_MANIFEST_MANIFEST_H

#include "common/err.h"
#include "common/hash.h"

#include <stddef.h>
#include <stdio.h>

#define MF_API_VERSION     "images.lab.gilman.io/v1alpha1"
#define MF_KIND            "ImageManifest"
#define MF_DEFAULT_PATH    "images/images.yaml"
#define MF_MAX_FILE_SIZE   (4u << 20) /* bytes of YAML */
#define MF_MAX_DESTINATION 1024       /* bytes */
#define MF_MAX_SEGMENT     255        /* bytes per path segment (NAME_MAX) */
#define MF_MAX_URL         8192
#define MF_MAX_NAME        255
#define MF_RESERVED_DIR    ".imgstore" /* imgfs's control directory */
#define MF_VERSIONS_DIR    "versions"  /* metadata/versions/: previous versions' records */
#define MF_MAX_KEEP        1000000     /* retention counts and days */

/* ---- problems ---------------------------------------------------------- */

struct mf_problem {
	int line, col; /* 1-based; column counts characters */
	char *image;   /* name of the image the problem is in, or NULL */
	char *overlay; /* name of the overlay the problem is in, or NULL */
	char *msg;     /* "what is wrong; what to change" */
};

struct mf_problems {
	char *file; /* FILE of the printed form (the path or label loaded) */
	struct mf_problem *v;
	size_t n, cap;
};

#define MF_PROBLEMS_INIT                                                                           \
	{                                                                                          \
		NULL, NULL, 0, 0                                                                   \
	}

void mf_problems_free(struct mf_problems *p); /* leaves it empty and reusable */
/* Problem i as "FILE:LINE:COLUMN: image "NAME": msg" (malloc'd; NULL on ENOMEM). */
char *mf_problem_format(const struct mf_problems *p, size_t i);
/* Problem i's message without its location: "image "NAME": msg" (malloc'd). */
char *mf_problem_message(const struct mf_problems *p, size_t i);
/* The FILE of the printed form. */
const char *mf_problems_file(const struct mf_problems *p);
/* Every problem, one per line, in document order. */
void mf_problems_print(FILE *f, const struct mf_problems *p);
/* Problems found outside the loader (labctl's --check-files): add one about
 * image `image` (NULL: none) at line:col, then sort into document order.
 * 0, or -1 when out of memory. */
int mf_problems_add(struct mf_problems *p, int line, int col, const char *image, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
int mf_problems_sort(struct mf_problems *p);

/* ---- the manifest ------------------------------------------------------ */

enum mf_decompress {
	MF_DECOMPRESS_NONE = 0,
	MF_DECOMPRESS_XZ,
	MF_DECOMPRESS_GZIP,
	MF_DECOMPRESS_ZSTD,
};

/* "none", "xz", "gzip", "zstd". */
const char *mf_decompress_name(enum mf_decompress d);

struct mf_pos {
	int line, col; /* where the entry starts in the manifest (for messages) */
};

struct mf_replacement {
	char *pattern; /* PCRE2 pattern, validated (compiles, cannot match "") */
	char *value;   /* template, validated (known variables only) */
	struct mf_pos pos;
};

/* path is checked as text only (relative, no ".." above the root, not in
 * .git): whoever opens it must still refuse symlinks that lead outside the
 * repository (manifest/ reads no other file). */
struct mf_update_file {
	char *path; /* relative to the repo root (manifest_repo_root), validated */
	struct mf_replacement *replacements;
	size_t nreplacements; /* >= 1 */
	struct mf_pos pos;
};

struct mf_source {
	char *url;      /* https://... */
	char *checksum; /* as written: "sha256:<hex>" or "sha512:<hex>" (hex in either case) */
	enum mf_decompress decompress;
};

struct mf_validation {
	/* validation.algorithm when given, else the algorithm of the effective
	 * checksum; always the algorithm of mf_image_effective_checksum(). */
	enum hash_alg algorithm;
	char *expected; /* validation.expected as written, or NULL */
};

/* Counts and days are 0 .. MF_MAX_KEEP. */
struct mf_retention {
	long keep_versions; /* previous versions kept per destination */
	long keep_days;     /* ... plus those replaced less than this many days ago */
};

#define MF_DEFAULT_KEEP_VERSIONS 1

struct mf_upload_rule {
	char *prefix;
	long keep;      /* the newest `keep` by uploadedAt stay */
	long keep_days; /* ... and every one uploaded less than this many days ago */
	struct mf_pos pos;
};

struct mf_image {
	char *name;
	struct mf_source source;
	char *destination; /* key under images/ in the bucket */
	struct mf_validation validation;
	struct mf_update_file *update_files; /* updateFile: one or more, or none */
	size_t nupdate_files;
	struct mf_retention retention; /* in effect: spec.retention with this image's keys */
	struct mf_pos pos;
};

struct mf_overlay {
	char *name;
	char *base;                        /* as written */
	const struct mf_image *base_image; /* the image it names (a qcow2) */
	char *output;                      /* "x.qcow2", a plain file name */
	char *variant;                     /* or NULL */
	char **packages;
	size_t npackages;
	char **services;
	size_t nservices;
	struct mf_pos pos;
};

struct manifest {
	char *path; /* as given to manifest_load, or the label of manifest_load_buffer */
	char *name; /* metadata.name */
	struct mf_image *images;
	size_t nimages;
	struct mf_overlay *overlays;
	size_t noverlays;
	struct mf_retention retention; /* spec.retention (defaults 1 and 0) */
	struct mf_upload_rule *uploads;
	size_t nuploads;
};

/* Read and validate a manifest.  On success *out is a valid manifest and
 * probs is empty.  Failures (*out = NULL, -1):
 *   ERR_INVALID   the manifest is invalid: every problem is in probs (which
 *                 may be NULL if the caller only wants the count in e->msg);
 *   ERR_NOTFOUND  no such file;  ERR_IO  unreadable, out of memory.
 * probs must be initialized (MF_PROBLEMS_INIT); what it held is freed. */
int manifest_load(const char *path, struct manifest **out, struct mf_problems *probs,
                  struct err *e);
/* The same from memory (tests, fuzzing, stdin); label names it in problems. */
int manifest_load_buffer(const void *data, size_t len, const char *label, struct manifest **out,
                         struct mf_problems *probs, struct err *e);
void manifest_free(struct manifest *m);

/* A valid manifest may name no images at all (validate accepts it).
 * Commands that delete what the manifest does not name (prune) must refuse
 * such a manifest: it would delete everything. */
static inline int manifest_names_no_images(const struct manifest *m)
{
	return m->nimages == 0;
}

/* Look-ups; NULL when absent. */
const struct mf_image *manifest_find_image(const struct manifest *m, const char *name);
const struct mf_image *manifest_find_destination(const struct manifest *m, const char *dest);
const struct mf_overlay *manifest_find_overlay(const struct manifest *m, const char *name);
/* The image name closest to a misspelt one (for "did you mean"), or NULL. */
const char *manifest_suggest_image(const struct manifest *m, const char *name);

/* The spec.uploads rule for an upload image's destination (the longest
 * prefix that matches), or NULL: no rule covers it, prune leaves it alone. */
const struct mf_upload_rule *manifest_upload_rule(const struct manifest *m, const char *dest);

/* The repository root that updateFile.path is relative to: the parent of the
 * directory that holds the manifest, as an absolute path without symlinks
 * in the manifest's directory.  For the default layout that is the
 * directory containing images/: /x/repo/images/images.yaml -> /x/repo.  The
 * rule is the same wherever the manifest lives (ci/m.yaml -> the parent of
 * ci/), so keep a manifest one directory below the root.  The manifest's
 * directory must exist.  *out is malloc'd. */
int manifest_repo_root(const char *manifest_path, char **out, struct err *e);

/* ---- rules usable on their own ----------------------------------------- */

/* A bucket destination: relative, at most MF_MAX_DESTINATION bytes, no
 * leading or trailing "/", no empty, "." or ".." segments, no segment over
 * MF_MAX_SEGMENT bytes, no backslash or control character, and not inside
 * MF_RESERVED_DIR.  0, or -1 with ERR_INVALID and "what; what to change". */
int mf_check_destination(const char *dest, struct err *e);

/* ---- using an image ---------------------------------------------------- */

/* The checksum the stored bytes must have: validation.expected when given,
 * else source.checksum ("sha256:<hex>" as written). */
const char *mf_image_effective_checksum(const struct mf_image *img);

/* Expand {{ .Source.URL }}, {{ .Source.Checksum }} (as written in the
 * manifest), {{ .Name }} and {{ .Destination }} in tmpl (any whitespace
 * inside the braces).  Unknown variables or an unclosed "{{" are ERR_INVALID.
 * *out is malloc'd. */
int mf_expand_template(const struct mf_image *img, const char *tmpl, char **out, struct err *e);

struct mf_apply_result {
	char *text; /* the new text, NUL-terminated (len excludes the NUL) */
	size_t len;
	int changed;     /* 1 when text differs from the input */
	size_t *matches; /* per replacement: how many times its pattern matched */
	size_t nmatches; /* = uf->nreplacements */
};

/* Apply the replacements of uf, in order, to text[0..len): every match of
 * each pattern (global) is replaced by its expanded value, taken literally
 * ("$1", "\" are not special).  Each pattern applies to the output of the
 * previous one.  A pattern that matches nothing leaves the text as is (see
 * res->matches to warn about it).  ERR_INVALID for a bad pattern or template
 * or a pattern that backtracks without end; ERR_IO when out of memory.
 * Free res with mf_apply_result_free (also after a failure). */
int mf_apply_replacements(const struct mf_image *img, const struct mf_update_file *uf,
                          const char *text, size_t len, struct mf_apply_result *res, struct err *e);
void mf_apply_result_free(struct mf_apply_result *res);

#endif
