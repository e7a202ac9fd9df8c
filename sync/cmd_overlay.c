/* labctl images overlay (CLI.md, issue 5): one qcow2 overlay per entry of
 * spec.overlays[], backed by the base's immutable name on an imgfs mount
 * (<mount>/.imgstore/by-sha256/<hex>), with <output minus
 * .qcow2>-provenance.json next to it.  qemu-img runs from an argument vector,
 * never through a shell. */
#include "sync/cmd_overlay.h"

#include "common/child.h"
#include "common/err.h"
#include "common/file.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "manifest/manifest.h"
#include "sync/bucket.h"
#include "sync/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

enum { OPT_MOUNT = 1, OPT_OVERLAY_DIR, OPT_ONLY, OPT_REBASE };

static const struct optdef overlay_opts[] = {
        {"mount", OPT_MOUNT, 1, "DIR", "where imgfs mounts the bucket (required)"},
        {"overlay-dir", OPT_OVERLAY_DIR, 1, "DIR",
         "where the overlays and provenance files are written (required)"},
        CLI_OPT_MANIFEST,
        {"only", OPT_ONLY, 1, "NAME", "only this overlay (repeatable)"},
        {"rebase", OPT_REBASE, 0, NULL,
         "move an overlay whose backing file differs onto the current base (qemu-img rebase, safe "
         "mode)"},
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec overlay_spec = {
        "images overlay",
        "--mount DIR --overlay-dir DIR [--manifest PATH] [--only NAME]... [--rebase]",
        "Create, for each spec.overlays[] entry of the manifest, <overlay-dir>/<output>: a\n"
        "qcow2 overlay whose backing file is the base's immutable path on the imgfs mount,\n"
        "<mount>/.imgstore/by-sha256/<hex>, and <output minus .qcow2>-provenance.json.\n"
        "The base must be a qcow2 image of spec.images, synced, and visible on the mount.\n"
        "An overlay that already has the right backing file is left alone; one on another\n"
        "backing file is refused unless --rebase is given.  When bucket credentials are\n"
        "configured (E2_* or --credentials), the base's checksum record is also read from\n"
        "the bucket, to tell an unsynced base from a mount that has not refreshed yet.",
        overlay_opts,
};

struct overlay_args {
	const char *mount;
	const char *overlay_dir;
	const char **only;
	size_t nonly;
	int rebase;
};

static int overlay_opt(void *ud, int id, const char *v, struct err *e)
{
	struct overlay_args *a = ud;
	switch (id) {
	case OPT_MOUNT: a->mount = v; return 0;
	case OPT_OVERLAY_DIR: a->overlay_dir = v; return 0;
	case OPT_REBASE: a->rebase = 1; return 0;
	case OPT_ONLY: {
		const char **n = realloc(a->only, (a->nonly + 1) * sizeof(*n));
		if (!n)
			return err_set(e, ERR_IO, "out of memory");
		a->only = n;
		a->only[a->nonly++] = v;
		return 0;
	}
	}
	return err_set(e, ERR_USAGE, "unknown option");
}

/* ------------------------------------------------------------ processes */

#define CAPTURE_MAX (4u << 20)

static const struct child_opts capture = {NULL, 0, CAPTURE_MAX, CAPTURE_MAX, 0};

/* The last non-empty line of a tool's stderr, trimmed, for error messages. */
static const char *last_line(char *s)
{
	char *end;
	if (!s)
		return "";
	end = s + strlen(s);
	while (end > s && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		*--end = '\0';
	for (char *p = end; p > s; p--)
		if (p[-1] == '\n')
			return p;
	return s;
}

/* Run a qemu-img command that must succeed; stdout in *out when out != NULL. */
static int qemu_img(char *const argv[], char **out, struct err *e)
{
	struct child_result r = CHILD_RESULT_INIT;
	struct err ce = {0};
	int rc = -1;
	if (child_run(argv, &capture, &r, &ce)) {
		err_set(e, ce.code, "%s%s", ce.msg,
		        ce.code == ERR_NOTFOUND ? " (install qemu-utils)" : "");
		goto out;
	}
	if (r.status != 0) {
		err_set(e, ERR_IO, "qemu-img %s failed (exit %d): %s", argv[1],
		        r.signal ? 128 + r.signal : r.status, last_line(r.err.data));
		goto out;
	}
	if (out)
		*out = buf_steal(&r.out);
	rc = 0;
out:
	child_result_free(&r);
	return rc;
}

/* `qemu-img info --output=json [-U] PATH` (probing the format). */
static int image_info(const char *path, int force_share, json_t **info, struct err *e)
{
	char *argv[6];
	char *text = NULL;
	json_error_t je;
	int i = 0;
	argv[i++] = "qemu-img";
	argv[i++] = "info";
	argv[i++] = "--output=json";
	if (force_share)
		argv[i++] = "-U";
	argv[i++] = (char *)path;
	argv[i] = NULL;
	if (qemu_img(argv, &text, e))
		return -1;
	*info = json_loads(text, 0, &je);
	free(text);
	if (!*info || !json_is_object(*info)) {
		json_decref(*info);
		*info = NULL;
		return err_set(e, ERR_IO, "qemu-img info %s: unreadable JSON output", path);
	}
	return 0;
}

static const char *json_str(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ------------------------------------------------------------ manifest view */

/* What one overlay needs from the manifest. */
struct ov_spec {
	const char *name;
	const char *base;      /* a destination of spec.images */
	const char *base_name; /* the name of that image */
	const char *output;    /* file name inside --overlay-dir */
	const char *variant;
	const char *const *packages;
	size_t npackages;
	const char *const *services;
	size_t nservices;
	int base_in_manifest;
	const char *base_checksum; /* the base's effective checksum ("sha256:<hex>")
	                              or NULL */
};

/* ------------------------------------------------------------ helpers */

static int path_join(char *out, size_t cap, const char *a, const char *b, struct err *e)
{
	int n = snprintf(out, cap, "%s/%s", a, b);
	if (n < 0 || (size_t)n >= cap)
		return err_set(e, ERR_USAGE, "path too long: %s/%s", a, b);
	return 0;
}

/* "sha256:<64 hex>" -> hex; 0 or -1. */
static int sha256_hex_of(const char *checksum, char hex[65])
{
	if (!checksum || strncmp(checksum, "sha256:", 7) || strlen(checksum) != 7 + 64)
		return -1;
	for (int i = 0; i < 64; i++) {
		char c = checksum[7 + i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
			return -1;
		hex[i] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
	}
	hex[64] = '\0';
	return 0;
}

/* The sha256 hex of a by-sha256 backing path, or NULL. */
static const char *by_sha256_hex(const char *path)
{
	const char *p = strstr(path, "/.imgstore/by-sha256/");
	if (!p)
		return NULL;
	p += strlen("/.imgstore/by-sha256/");
	return strlen(p) == 64 && hex_is_lower(p, 64) ? p : NULL;
}

/* HEAD of the git checkout that holds `dir` into sha (SHA-1 or SHA-256 hex); 0 when it
 * is one, -1 otherwise (not a checkout, no git, no commit yet). */
static int git_head(const char *dir, char sha[65])
{
	char *argv[] = {"git", "-C", (char *)dir, "rev-parse", "--verify", "-q", "HEAD", NULL};
	struct child_result r = CHILD_RESULT_INIT;
	int rc = -1;
	if (child_run(argv, &capture, &r, NULL) == 0 && r.status == 0) {
		size_t n = strcspn(r.out.data, "\r\n");
		r.out.data[n] = '\0';
		if ((n == 40 || n == 64) && hex_is_lower(r.out.data, n)) {
			memcpy(sha, r.out.data, n);
			sha[n] = '\0';
			rc = 0;
		}
	}
	child_result_free(&r);
	return rc;
}

/* The build date: now, or SOURCE_DATE_EPOCH for reproducible output. */
static void build_date(char out[32])
{
	const char *sde = getenv("SOURCE_DATE_EPOCH");
	time_t t = time(NULL);
	if (sde && *sde) {
		char *end;
		long long v = strtoll(sde, &end, 10);
		if (!*end && v >= 0)
			t = (time_t)v;
	}
	time_format_rfc3339(t, out);
}

static json_t *string_array(const char *const *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(v[i]))) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* ------------------------------------------------------------ one overlay */

struct ctx {
	const struct overlay_args *args;
	char mount[PATH_MAX];       /* realpath of --mount */
	char overlay_dir[PATH_MAX]; /* realpath of --overlay-dir */
	const char *manifest_path;
	int have_git;
	char git_sha[65];
	struct s3 *s3; /* NULL when no bucket credentials are configured */
};

/* Where the base is, as seen through the mount and (when configured) the
 * bucket: fills the backing path and hex.  Errors say which check failed. */
static int resolve_base(struct ctx *c, const struct ov_spec *o, char backing[PATH_MAX],
                        char hex[65], struct err *e)
{
	char visible[PATH_MAX], xval[RECORD_CHECKSUM_MAX + 8], expect_hex[65];
	struct bucket_image bi = {0};
	struct stat st_dest, st_back;
	json_t *info = NULL;
	const char *fmt;
	ssize_t xn;
	int rc = -1, have_expect;

	if (!o->base_in_manifest)
		return err_set(e, ERR_INVALID,
		               "base '%s' is not a destination of spec.images in %s: add the image "
		               "there (or fix the overlay's base)",
		               o->base, c->manifest_path);
	have_expect = sha256_hex_of(o->base_checksum, expect_hex) == 0;

	/* The bucket's view, when we can ask it. */
	if (c->s3) {
		if (bucket_check(c->s3, o->base, &bi, e)) {
			err_prefix(e, "reading the checksum record of base '%s'", o->base);
			goto out;
		}
		if (!bi.exists || !bi.has_record) {
			err_set(e, ERR_NOTFOUND,
			        "base '%s' is not synced (%s in the bucket): run 'labctl images "
			        "sync --only %s' first",
			        o->base, !bi.exists ? "no image object" : "no checksum record",
			        o->base_name);
			goto out;
		}
		if (!bi.complete) {
			err_set(e, ERR_INTEGRITY,
			        "base '%s' in the bucket does not match its checksum record (%s): "
			        "re-run 'labctl images sync'",
			        o->base, bi.problem);
			goto out;
		}
		if (have_expect && (strncmp(bi.rec.checksum, "sha256:", 7) ||
		                    strcmp(bi.rec.checksum + 7, expect_hex))) {
			err_set(e, ERR_INTEGRITY,
			        "base '%s' in the bucket is %s but the manifest expects sha256:%s: "
			        "run 'labctl images sync' first",
			        o->base, bi.rec.checksum, expect_hex);
			goto out;
		}
		/* a sha512 manifest checksum: the record keeps it as manifestChecksum,
		 * and its sha256 checksum is what the mount must show */
		if (!have_expect && o->base_checksum) {
			if (!record_has_checksum(&bi.rec, o->base_checksum)) {
				err_set(e, ERR_INTEGRITY,
				        "base '%s' in the bucket is %s but the manifest expects "
				        "%s: "
				        "run 'labctl images sync' first",
				        o->base, bi.rec.checksum, o->base_checksum);
				goto out;
			}
			have_expect = sha256_hex_of(bi.rec.checksum, expect_hex) == 0;
		}
	}

	/* The mount's view: this is what QEMU will read. */
	if (path_join(visible, sizeof(visible), c->mount, o->base, e))
		goto out;
	if (stat(visible, &st_dest)) {
		if (errno != ENOENT) {
			err_errno(e, "base '%s' on the mount (%s)", o->base, visible);
			goto out;
		}
		if (c->s3)
			err_set(e, ERR_NOTFOUND,
			        "base '%s' is synced but not visible on the mount %s yet: wait for "
			        "imgfs to refresh its listing (--refresh) or send it SIGHUP",
			        o->base, c->mount);
		else
			err_set(e, ERR_NOTFOUND,
			        "base '%s' is not visible on the mount %s: it is not synced (no "
			        "valid checksum record; run 'labctl images sync') or imgfs has not "
			        "refreshed its listing yet (send it SIGHUP)",
			        o->base, c->mount);
		goto out;
	}
	if (!S_ISREG(st_dest.st_mode)) {
		err_set(e, ERR_IO, "base '%s' on the mount is not a regular file", o->base);
		goto out;
	}
	xn = getxattr(visible, "user.imgstore.checksum", xval, sizeof(xval) - 1);
	if (xn < 0) {
		err_errno(e, "reading xattr user.imgstore.checksum of %s (is %s an imgfs mount?)",
		          visible, c->mount);
		goto out;
	}
	xval[xn] = '\0';
	if (sha256_hex_of(xval, hex)) {
		err_set(e, ERR_INTEGRITY,
		        "base '%s': the mount reports checksum '%s', not sha256:<hex>; overlays "
		        "need the sha256 name under .imgstore/by-sha256",
		        o->base, xval);
		goto out;
	}
	if (c->s3 && (strncmp(bi.rec.checksum, "sha256:", 7) || strcmp(bi.rec.checksum + 7, hex))) {
		err_set(e, ERR_PRECONDITION,
		        "base '%s' is %s in the bucket but the mount %s still shows sha256:%s: "
		        "wait for imgfs to refresh its listing (--refresh) or send it SIGHUP",
		        o->base, bi.rec.checksum, c->mount, hex);
		goto out;
	}
	if (have_expect && strcmp(hex, expect_hex)) {
		err_set(e, ERR_INTEGRITY,
		        "base '%s' on the mount is sha256:%s but the manifest expects sha256:%s: "
		        "run 'labctl images sync' first (or wait for the mount to refresh)",
		        o->base, hex, expect_hex);
		goto out;
	}
	{
		int n = snprintf(backing, PATH_MAX, "%s/.imgstore/by-sha256/%s", c->mount, hex);
		if (n < 0 || n >= PATH_MAX) {
			err_set(e, ERR_USAGE, "mount path too long");
			goto out;
		}
	}
	if (stat(backing, &st_back) || !S_ISREG(st_back.st_mode)) {
		err_set(e, ERR_NOTFOUND, "base '%s': %s is not on the mount (%s)", o->base, backing,
		        errno ? strerror(errno) : "not a regular file");
		goto out;
	}
	if (st_back.st_size != st_dest.st_size) {
		err_set(e, ERR_INTEGRITY, "base '%s': %s has %lld bytes but %s has %lld", o->base,
		        backing, (long long)st_back.st_size, visible, (long long)st_dest.st_size);
		goto out;
	}

	/* qcow2, self-contained. */
	if (image_info(backing, 0, &info, e)) {
		err_prefix(e, "base '%s'", o->base);
		goto out;
	}
	fmt = json_str(info, "format");
	if (!fmt || strcmp(fmt, "qcow2")) {
		err_set(e, ERR_INVALID,
		        "base '%s' is %s, not qcow2: overlays need a qcow2 base (convert it with "
		        "'qemu-img convert -O qcow2' and upload that)",
		        o->base, fmt ? fmt : "of unknown format");
		goto out;
	}
	if (json_str(info, "backing-filename")) {
		err_set(e, ERR_INVALID,
		        "base '%s' has a backing file of its own (%s): a base must be "
		        "self-contained (qemu-img convert it first)",
		        o->base, json_str(info, "backing-filename"));
		goto out;
	}
	rc = 0;
out:
	json_decref(info);
	bucket_image_clear(&bi);
	/* a base-side problem is "the work failed" (1); only the manifest gives 2 */
	if (rc && err_exit_code(e) == 2)
		e->code = ERR_IO;
	return rc;
}

/* The provenance document of an overlay. */
static json_t *provenance(struct ctx *c, const struct ov_spec *o, const char *backing,
                          const char *hex)
{
	char date[32];
	json_t *doc = json_object(), *base = json_object(), *src = json_object();
	json_t *pk = string_array(o->packages, o->npackages);
	json_t *sv = string_array(o->services, o->nservices);
	if (!doc || !base || !src || !pk || !sv)
		goto fail;
	build_date(date);
	if (json_object_set_new(base, "path", json_string(o->base)) ||
	    json_object_set_new(base, "sha256", json_string(hex)) ||
	    json_object_set_new(base, "backing_file", json_string(backing)) ||
	    json_object_set_new(src, "git_sha",
	                        c->have_git ? json_string(c->git_sha) : json_null()) ||
	    json_object_set_new(src, "build_date", json_string(date)) ||
	    json_object_set_new(doc, "format_version", json_string("1.0")) ||
	    json_object_set_new(doc, "build_type", json_string("alpine-variant")) ||
	    json_object_set_new(doc, "name", json_string(o->name)) ||
	    json_object_set_new(doc, "variant", o->variant ? json_string(o->variant) : json_null()))
		goto fail;
	if (json_object_set_new(doc, "base_image", base)) {
		base = NULL;
		goto fail;
	}
	base = NULL;
	if (json_object_set_new(doc, "source", src)) {
		src = NULL;
		goto fail;
	}
	src = NULL;
	if (json_object_set_new(doc, "packages", pk)) {
		pk = NULL;
		goto fail;
	}
	pk = NULL;
	if (json_object_set_new(doc, "services", sv)) {
		sv = NULL;
		goto fail;
	}
	return doc;
fail:
	json_decref(doc);
	json_decref(base);
	json_decref(src);
	json_decref(pk);
	json_decref(sv);
	return NULL;
}

/* Does the file at path already say the same, but for source (the build)? */
static int provenance_current(const char *path, const json_t *want)
{
	json_error_t je;
	json_t *have = json_load_file(path, 0, &je), *a, *b;
	int same = 0;
	if (!have)
		return 0;
	a = json_deep_copy(have);
	b = json_deep_copy(want);
	if (a && b) {
		json_object_del(a, "source");
		json_object_del(b, "source");
		same = json_equal(a, b) && json_is_object(json_object_get(have, "source"));
	}
	json_decref(a);
	json_decref(b);
	json_decref(have);
	return same;
}

static int write_provenance(struct ctx *c, const struct ov_spec *o, const char *backing,
                            const char *hex, int force, struct err *e)
{
	char path[PATH_MAX], stem[PATH_MAX];
	size_t n = strlen(o->output);
	json_t *doc = NULL;
	char *text = NULL;
	int rc = -1;
	if (n > 6 && !strcmp(o->output + n - 6, ".qcow2"))
		n -= 6;
	snprintf(stem, sizeof(stem), "%.*s-provenance.json", (int)n, o->output);
	if (path_join(path, sizeof(path), c->overlay_dir, stem, e))
		return -1;
	doc = provenance(c, o, backing, hex);
	if (!doc) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (!force && provenance_current(path, doc)) {
		rc = 0;
		goto out;
	}
	text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (!text || !(text = realloc(text, strlen(text) + 2))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	strcat(text, "\n");
	if (file_write_atomic(path, text, strlen(text), 0644, e)) {
		err_prefix(e, "writing the provenance of '%s'", o->name);
		goto out;
	}
	rc = 0;
out:
	free(text);
	json_decref(doc);
	return rc;
}

/* Create the overlay under a temporary name, then move it into place without
 * replacing anything that appeared meanwhile. */
static int create_overlay(struct ctx *c, const struct ov_spec *o, const char *backing,
                          const char *out_path, struct err *e)
{
	char tmp[PATH_MAX], tmpname[NAME_MAX + 1];
	int rc = -1;
	snprintf(tmpname, sizeof(tmpname), ".%.200s.tmp.%ld", o->output, (long)getpid());
	if (path_join(tmp, sizeof(tmp), c->overlay_dir, tmpname, e))
		return -1;
	{
		char *argv[] = {"qemu-img",      "create", "-q",    "-f", "qcow2", "-b",
		                (char *)backing, "-F",     "qcow2", tmp,  NULL};
		unlink(tmp);
		if (qemu_img(argv, NULL, e))
			goto out;
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_path, RENAME_NOREPLACE)) {
		if (errno == EEXIST)
			err_set(e, ERR_IO, "%s appeared while it was being created; run again",
			        out_path);
		else
			err_errno(e, "renaming %s to %s", tmp, out_path);
		goto out;
	}
	tmp[0] = '\0';
	rc = 0;
out:
	if (tmp[0])
		unlink(tmp);
	if (rc)
		err_prefix(e, "creating overlay '%s'", o->name);
	return rc;
}

enum ov_result { OV_CREATED, OV_UNCHANGED, OV_REBASED };

static int do_overlay(struct ctx *c, const struct ov_spec *o, enum ov_result *res, struct err *e)
{
	char backing[PATH_MAX], hex[65], out_path[PATH_MAX];
	json_t *info = NULL;
	struct stat st;
	int rc = -1, fresh = 0;

	if (resolve_base(c, o, backing, hex, e))
		return -1;
	if (path_join(out_path, sizeof(out_path), c->overlay_dir, o->output, e))
		return -1;

	if (lstat(out_path, &st) == 0) {
		const char *fmt, *old, *old_fmt;
		if (!S_ISREG(st.st_mode)) {
			err_set(e, ERR_IO, "%s exists and is not a regular file: not touching it",
			        out_path);
			goto out;
		}
		if (image_info(out_path, 1, &info, e))
			goto out;
		fmt = json_str(info, "format");
		old = json_str(info, "full-backing-filename");
		if (!old)
			old = json_str(info, "backing-filename");
		old_fmt = json_str(info, "backing-filename-format");
		if (!fmt || strcmp(fmt, "qcow2") || !old) {
			err_set(e, ERR_IO,
			        "%s exists and is not a qcow2 overlay (%s%s): not overwriting it; "
			        "move it away to create the overlay",
			        out_path, fmt ? fmt : "unknown format",
			        old ? "" : ", no backing file");
			goto out;
		}
		if (!strcmp(old, backing) && old_fmt && !strcmp(old_fmt, "qcow2")) {
			*res = OV_UNCHANGED;
		} else if (!c->args->rebase) {
			const char *oh = by_sha256_hex(old);
			err_set(e, ERR_IO,
			        "%s already exists on another backing file: %s (%s), while base "
			        "'%s' is now %s; pass --rebase to move it onto the new base "
			        "(qemu-img rebase, which needs both bases readable), or remove the "
			        "file to start afresh",
			        out_path, old,
			        oh && !strcmp(oh, hex) ? "the same bytes at another path"
			                               : "different bytes",
			        o->base, backing);
			goto out;
		} else {
			/* Safe rebase (reads the old and the new base) unless the old backing
			 * is the same immutable content under another mount path. */
			const char *oh = by_sha256_hex(old);
			int same_bytes = oh && !strcmp(oh, hex);
			char *argv[] = {"qemu-img", "rebase", "-q", "-f",    "qcow2",
			                "-F",       "qcow2",  "-b", backing, (char *)out_path,
			                NULL,       NULL};
			if (same_bytes) {
				memmove(argv + 3, argv + 2, 9 * sizeof(*argv));
				argv[2] = "-u";
			} else if (access(old, R_OK)) {
				err_set(e, ERR_IO,
				        "cannot rebase %s: its current backing file %s is not "
				        "readable (%s); a safe rebase needs both the old and the "
				        "new base (mount the old one, or remove the overlay to "
				        "start afresh)",
				        out_path, old, strerror(errno));
				goto out;
			}
			log_info("rebasing %s from %s onto %s%s", out_path, old, backing,
			         same_bytes ? " (same bytes: header only)" : "");
			if (qemu_img(argv, NULL, e)) {
				err_prefix(e, "rebasing overlay '%s'", o->name);
				goto out;
			}
			*res = OV_REBASED;
			fresh = 1;
		}
	} else if (errno == ENOENT) {
		if (create_overlay(c, o, backing, out_path, e))
			goto out;
		*res = OV_CREATED;
		fresh = 1;
	} else {
		err_errno(e, "%s", out_path);
		goto out;
	}
	if (write_provenance(c, o, backing, hex, fresh, e))
		goto out;
	rc = 0;
out:
	json_decref(info);
	return rc;
}

/* ------------------------------------------------------------ the command */

/* The overlays of a loaded manifest as ov_specs (pointing into m). */
static int collect_specs(const struct manifest *m, struct ov_spec **out, size_t *n, struct err *e)
{
	struct ov_spec *v = calloc(m->noverlays ? m->noverlays : 1, sizeof(*v));
	if (!v)
		return err_set(e, ERR_IO, "out of memory");
	for (size_t i = 0; i < m->noverlays; i++) {
		const struct mf_overlay *o = &m->overlays[i];
		const struct mf_image *img = o->base_image;
		if (!img)
			img = manifest_find_destination(m, o->base);
		if (!img)
			img = manifest_find_image(m, o->base);
		v[i].name = o->name;
		v[i].base = img ? img->destination : o->base;
		v[i].base_name = img ? img->name : o->base;
		v[i].output = o->output;
		v[i].variant = o->variant;
		v[i].packages = (const char *const *)o->packages;
		v[i].npackages = o->npackages;
		v[i].services = (const char *const *)o->services;
		v[i].nservices = o->nservices;
		v[i].base_in_manifest = img != NULL;
		v[i].base_checksum = img ? mf_image_effective_checksum(img) : NULL;
	}
	*out = v;
	*n = m->noverlays;
	return 0;
}

static int check_output_name(const struct ov_spec *o, struct err *e)
{
	const char *s = o->output;
	if (!s || !*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..") ||
	    strlen(s) > NAME_MAX - 40)
		return err_set(
		        e, ERR_INVALID,
		        "overlay '%s': output '%s' must be a plain file name inside --overlay-dir",
		        o->name, s ? s : "");
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return err_set(e, ERR_INVALID,
			               "overlay '%s': output contains a control character",
			               o->name);
	return 0;
}

static int selected(const struct overlay_args *a, const char *name)
{
	if (!a->nonly)
		return 1;
	for (size_t i = 0; i < a->nonly; i++)
		if (!strcmp(a->only[i], name))
			return 1;
	return 0;
}

/* Bucket credentials are optional for this command: used when configured. */
static int open_bucket(const struct common_opts *common, struct s3 **s3, struct err *e)
{
	struct s3_config cfg = {0};
	const char *ep = getenv("E2_ENDPOINT");
	*s3 = NULL;
	if (!common->cred.credentials_path && !(ep && *ep))
		return 0;
	if (cli_s3_config(common, &cfg, e))
		return -1;
	*s3 = s3_open(&cfg, e);
	s3_config_free(&cfg);
	return *s3 ? 0 : -1;
}

int cmd_overlay(int argc, char **argv)
{
	struct overlay_args args = {0};
	struct common_opts common = {0};
	struct manifest *m = NULL;
	struct ov_spec *specs = NULL;
	size_t nspecs = 0;
	struct ctx c = {0};
	struct err e = {0};
	int rc, status = 1, failed = 0, done = 0;

	rc = cli_parse(&overlay_spec, argc, argv, &common, overlay_opt, &args, &e);
	if (rc) {
		status = rc > 0 ? 0 : cli_fail(&e);
		goto out;
	}
	c.args = &args;
	c.manifest_path = cli_manifest_path(&common);
	if (!args.mount || !args.overlay_dir) {
		err_set(&e, ERR_USAGE,
		        "images overlay: %s is required (see 'labctl images overlay --help')",
		        !args.mount ? "--mount DIR" : "--overlay-dir DIR");
		status = cli_fail(&e);
		goto out;
	}

	/* The manifest first: a manifest problem is exit 2 whatever else is wrong. */
	if (cli_load_manifest(&common, &m, &e) || collect_specs(m, &specs, &nspecs, &e)) {
		status = cli_fail(&e);
		goto out;
	}
	for (size_t i = 0; i < args.nonly; i++) {
		size_t j;
		for (j = 0; j < nspecs && strcmp(specs[j].name, args.only[i]); j++)
			;
		if (j == nspecs) {
			err_set(&e, ERR_USAGE,
			        "--only %s: the manifest %s has no overlay named '%s'",
			        args.only[i], c.manifest_path, args.only[i]);
			status = cli_fail(&e);
			goto out;
		}
	}
	for (size_t i = 0; i < nspecs; i++) {
		if (check_output_name(&specs[i], &e)) {
			status = cli_fail(&e);
			goto out;
		}
		for (size_t j = 0; j < i; j++)
			if (!strcmp(specs[i].output, specs[j].output)) {
				err_set(&e, ERR_INVALID,
				        "overlays '%s' and '%s' both write output '%s': give each "
				        "its own file name",
				        specs[j].name, specs[i].name, specs[i].output);
				status = cli_fail(&e);
				goto out;
			}
	}
	if (nspecs == 0) {
		log_info("the manifest %s has no spec.overlays: nothing to do", c.manifest_path);
		status = 0;
		goto out;
	}

	/* The mount and the output directory. */
	if (!realpath(args.mount, c.mount)) {
		err_errno(&e, "--mount %s", args.mount);
		status = cli_fail(&e);
		goto out;
	}
	{
		char dot[PATH_MAX];
		struct stat st;
		if (path_join(dot, sizeof(dot), c.mount, ".imgstore", &e) == 0 &&
		    (stat(dot, &st) || !S_ISDIR(st.st_mode)))
			err_set(&e, ERR_IO,
			        "%s is not an imgfs mount (no .imgstore directory): mount the "
			        "bucket there first ('imgfs %s')",
			        c.mount, c.mount);
		if (e.code) {
			status = cli_fail(&e);
			goto out;
		}
	}
	if (mkdir(args.overlay_dir, 0755) && errno != EEXIST) {
		err_errno(&e, "creating --overlay-dir %s", args.overlay_dir);
		status = cli_fail(&e);
		goto out;
	}
	if (!realpath(args.overlay_dir, c.overlay_dir)) {
		err_errno(&e, "--overlay-dir %s", args.overlay_dir);
		status = cli_fail(&e);
		goto out;
	}
	{
		char mdir[PATH_MAX], *slash;
		if (realpath(c.manifest_path, mdir)) {
			if ((slash = strrchr(mdir, '/')))
				*(slash == mdir ? slash + 1 : slash) = '\0';
			c.have_git = git_head(mdir, c.git_sha) == 0;
		}
	}
	if (open_bucket(&common, &c.s3, &e)) {
		err_prefix(&e, "opening the bucket");
		status = cli_fail(&e);
		goto out;
	}

	for (size_t i = 0; i < nspecs; i++) {
		enum ov_result res;
		struct err oe = {0};
		if (!selected(&args, specs[i].name))
			continue;
		done++;
		if (do_overlay(&c, &specs[i], &res, &oe)) {
			fprintf(stderr, "labctl: overlay '%s': %s\n", specs[i].name, oe.msg);
			failed++;
			if (err_exit_code(&oe) == 2)
				status = 2;
			continue;
		}
		printf("%-8s %s  (%s on %s)\n",
		       res == OV_CREATED   ? "created"
		       : res == OV_REBASED ? "rebased"
		                           : "ok",
		       specs[i].output, specs[i].name, specs[i].base);
	}
	fflush(stdout);
	if (failed)
		log_error("%d of %d overlays failed", failed, done);
	status = failed ? (status == 2 ? 2 : 1) : 0;
out:
	if (c.s3)
		s3_close(c.s3);
	free(specs);
	manifest_free(m);
	free(args.only);
	return status;
}
