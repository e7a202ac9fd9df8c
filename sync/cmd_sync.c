/* labctl images sync [--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH]
 *                    [--dry-run] [--offline] [--force] [--parallel N] [--only NAME]...
 *                    [--skip NAME]... [--json] */
#include "common/buf.h"
#include "common/file.h"
#include "common/log.h"
#include "common/size.h"
#include "manifest/manifest.h"
#include "sync/bucket.h"
#include "sync/cli.h"
#include "sync/commands.h"
#include "sync/files.h"
#include "sync/github.h"
#include "sync/interrupt.h"
#include "sync/job.h"
#include "sync/pipeline.h"
#include "sync/progress.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARALLEL 16
/* xz decoder threads per image: two overlap the blocks of xz -T files in
 * bounded memory (sync/xz_blocks.c); more cost a dictionary and a stage each */
#define SYNC_XZ_THREADS 2

enum {
	OPT_DRY_RUN = 1,
	OPT_FORCE,
	OPT_PARALLEL,
	OPT_ONLY,
	OPT_SKIP,
	OPT_XZ_THREADS,
	OPT_OFFLINE,
	OPT_JSON
};

static const struct optdef sync_opts[] = {
        CLI_OPT_MANIFEST,
        CLI_OPT_CREDENTIALS,
        CLI_OPT_SOPS_AGE_KEY_FILE,
        {"dry-run", OPT_DRY_RUN, 0, NULL,
         "print the plan (skip / upload and why / files to "
         "rewrite) and change nothing"},
        {"force", OPT_FORCE, 0, NULL, "re-upload images even when their record matches"},
        {"parallel", OPT_PARALLEL, 1, "N", "images synced at once (default 1)"},
        {"offline", OPT_OFFLINE, 0, NULL,
         "with --dry-run: no bucket and no credentials; apply the updateFile rewrites the "
         "manifest implies and report them (a pin preview for pull requests)"},
        {"only", OPT_ONLY, 1, "NAME", "only this image (repeatable)"},
        {"skip", OPT_SKIP, 1, "NAME", "every image but this one (repeatable)"},
        {"json", OPT_JSON, 0, NULL, "print one JSON document on stdout instead of the table"},
        {"xz-threads", OPT_XZ_THREADS, 1, "N",
         "xz decoder threads per image, 1 to 16 (default 2, and 1 with --parallel; helps "
         "multi-block .xz files, as xz -T makes)"},
        CLI_OPT_CA_BUNDLE,
        CLI_OPT_END,
};

static const struct cmd_spec sync_spec = {
        "images sync",
        "[--manifest PATH] [--credentials PATH] [--sops-age-key-file PATH] [--dry-run] "
        "[--offline] [--force] [--parallel N] [--only NAME]... [--skip NAME]... [--json]",
        "For every image of the manifest whose record in the bucket does not already hold\n"
        "its checksum (validation.expected, else source.checksum): download the source over\n"
        "HTTPS (resuming after a dropped connection), check its checksum, decompress it,\n"
        "upload it with its checksum record (written last), then apply its updateFile\n"
        "replacements (atomic rewrites).  A checksum mismatch stores nothing; the other\n"
        "images still sync and the exit status is 1.  With GITHUB_OUTPUT set,\n"
        "files_changed=true|false is appended to it (also with --dry-run); with\n"
        "GITHUB_ACTIONS=true a table of the images goes to GITHUB_STEP_SUMMARY.\n"
        "updateFile.path is relative to the directory that contains the manifest's\n"
        "directory (the repo root).",
        sync_opts,
};

struct sync_args {
	int dry_run, force, offline, json;
	long parallel, xz_threads;
	const char **only, **skip;
	size_t nonly, nskip;
};

static int add_name(const char ***v, size_t *n, const char *name, struct err *e)
{
	const char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv)
		return err_set(e, ERR_IO, "out of memory");
	*v = nv;
	nv[(*n)++] = name;
	return 0;
}

static int sync_opt(void *ud, int id, const char *v, struct err *e)
{
	struct sync_args *a = ud;
	switch (id) {
	case OPT_DRY_RUN: a->dry_run = 1; break;
	case OPT_FORCE: a->force = 1; break;
	case OPT_PARALLEL: return cli_parse_int("parallel", v, 1, MAX_PARALLEL, &a->parallel, e);
	case OPT_XZ_THREADS: return cli_parse_int("xz-threads", v, 1, 16, &a->xz_threads, e);
	case OPT_OFFLINE: a->offline = 1; break;
	case OPT_JSON: a->json = 1; break;
	case OPT_ONLY: return add_name(&a->only, &a->nonly, v, e);
	case OPT_SKIP: return add_name(&a->skip, &a->nskip, v, e);
	}
	return 0;
}

enum action { ACT_SKIP, ACT_UPLOAD, ACT_FAILED, ACT_PREVIEW };

struct item {
	const struct mf_image *img;
	enum action action;
	int ok; /* skipped or uploaded successfully */
	char reason[1100];
	struct job_result res;
	struct err e;
	int files_failed;
};

static enum decomp_kind decomp_of(enum mf_decompress d)
{
	switch (d) {
	case MF_DECOMPRESS_XZ: return DECOMP_XZ;
	case MF_DECOMPRESS_GZIP: return DECOMP_GZIP;
	case MF_DECOMPRESS_ZSTD: return DECOMP_ZSTD;
	default: return DECOMP_NONE;
	}
}

/* Decide skip or upload from what the bucket holds. */
static void plan_item(struct s3 *s3, struct item *it, int force)
{
	struct bucket_image im = {0};
	const char *want = mf_image_effective_checksum(it->img);
	if (bucket_check(s3, it->img->destination, &im, &it->e)) {
		it->action = ACT_FAILED;
		snprintf(it->reason, sizeof(it->reason), "%s", it->e.msg);
		goto out;
	}
	it->action = ACT_UPLOAD;
	if (force)
		snprintf(it->reason, sizeof(it->reason), "--force");
	else if (!im.exists)
		snprintf(it->reason, sizeof(it->reason), "not in the bucket yet");
	else if (!im.complete)
		snprintf(it->reason, sizeof(it->reason), "%s", im.problem);
	else if (!record_has_checksum(&im.rec, want))
		snprintf(it->reason, sizeof(it->reason),
		         "the record has %s%s%s, the manifest wants %s", im.rec.checksum,
		         im.rec.manifest_checksum[0] ? " and " : "", im.rec.manifest_checksum,
		         want);
	else {
		it->action = ACT_SKIP;
		it->ok = 1;
		snprintf(it->reason, sizeof(it->reason), "up to date (%s)", want);
	}
out:
	bucket_image_clear(&im);
}

struct runner {
	struct item **todo;
	size_t n, next;
	const struct s3_config *cfg;
	const char *ca_bundle;
	int xz_threads, part_workers;
	size_t part_size;
	pthread_mutex_t mu;
};

static void run_item(struct runner *r, struct item *it)
{
	struct image_job j = {0};
	const struct mf_image *img = it->img;
	j.cfg = r->cfg;
	j.name = img->name;
	j.destination = img->destination;
	j.url = img->source.url;
	j.source_checksum = img->source.checksum;
	j.decompress = decomp_of(img->source.decompress);
	j.expected = img->validation.expected;
	j.ca_bundle = r->ca_bundle;
	j.xz_threads = r->xz_threads;
	j.part_workers = r->part_workers;
	j.part_size = r->part_size;
	if (interrupted()) {
		it->action = ACT_FAILED;
		err_set(&it->e, ERR_NET, "%s: not started: interrupted", img->name);
		return;
	}
	if (job_run(&j, &it->res, &it->e)) {
		it->action = ACT_FAILED;
		progress_log("error: %s", it->e.msg);
	} else {
		it->ok = 1;
	}
}

static void *runner_main(void *arg)
{
	struct runner *r = arg;
	for (;;) {
		struct item *it;
		pthread_mutex_lock(&r->mu);
		it = r->next < r->n ? r->todo[r->next++] : NULL;
		pthread_mutex_unlock(&r->mu);
		if (!it)
			return NULL;
		run_item(r, it);
	}
}

static void run_uploads(struct runner *r, long parallel)
{
	pthread_t th[MAX_PARALLEL];
	int nth = 0;
	pthread_mutex_init(&r->mu, NULL);
	if (parallel > 1)
		for (long i = 0; i < parallel && (size_t)i < r->n; i++)
			if (!pthread_create(&th[nth], NULL, runner_main, r))
				nth++;
	if (!nth)
		runner_main(r);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&r->mu);
}

/* Apply the updateFile entries of one image; *changed set when a file changed. */
static int update_files(const struct mf_image *img, const char *root, int dry_run, int *changed,
                        struct err *e)
{
	for (size_t u = 0; u < img->nupdate_files; u++) {
		const struct mf_update_file *uf = &img->update_files[u];
		struct mf_apply_result res = {0};
		struct buf text = BUF_INIT;
		char *path = NULL;
		int rc = -1;
		path = files_inside(root, uf->path, e);
		if (!path || file_read_all(path, FILES_UPDATE_MAX, &text, e))
			goto next;
		if (mf_apply_replacements(img, uf, text.data ? text.data : "", text.len, &res, e))
			goto next;
		for (size_t k = 0; k < res.nmatches; k++)
			if (!res.matches[k])
				progress_log("warning: %s: updateFile %s: pattern %zu (%s) matched "
				             "nothing",
				             img->name, uf->path, k + 1,
				             uf->replacements[k].pattern);
		if (res.changed) {
			if (dry_run) {
				printf("    would rewrite %s\n", uf->path);
			} else if (file_write_atomic(path, res.text, res.len, 0644, e)) {
				goto next;
			} else {
				progress_log("%s: rewrote %s", img->name, uf->path);
			}
			*changed = 1;
		} else if (dry_run) {
			printf("    %s is up to date\n", uf->path);
		}
		rc = 0;
	next:
		mf_apply_result_free(&res);
		buf_free(&text);
		free(path);
		if (rc)
			return err_prefix(e, "%s: updateFile %s", img->name, uf->path);
	}
	return 0;
}

static const char *action_name(const struct item *it)
{
	switch (it->action) {
	case ACT_SKIP: return "skipped";
	case ACT_UPLOAD: return it->files_failed ? "uploaded*" : "uploaded";
	default: return "FAILED";
	}
}

static void print_summary(struct item *items, size_t n, int changed)
{
	int wn = 4, up = 0, skip = 0, fail = 0;
	for (size_t i = 0; i < n; i++) {
		int l = (int)strlen(items[i].img->name);
		wn = l > wn ? l : wn;
	}
	printf("\n%-*s  %-9s  %10s  %8s  %11s  %s\n", wn, "NAME", "ACTION", "SIZE", "TIME", "RATE",
	       "DETAIL");
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		char size[32] = "-", dur[32] = "-", rate[32] = "-", detail[1400];
		if (it->action == ACT_UPLOAD) {
			size_format(it->res.stored_bytes, size, sizeof(size));
			progress_duration(it->res.seconds, dur, sizeof(dur));
			progress_rate(it->res.seconds > 0 ? it->res.stored_bytes / it->res.seconds
			                                  : 0,
			              rate, sizeof(rate));
			snprintf(detail, sizeof(detail), "%s (%s)%s", it->res.checksum, it->reason,
			         it->res.resumes ? ", download resumed" : "");
			up++;
		} else if (it->action == ACT_SKIP) {
			snprintf(detail, sizeof(detail), "%s", it->reason);
			skip++;
		} else {
			snprintf(detail, sizeof(detail), "%s", it->e.msg);
			fail++;
		}
		if (it->files_failed)
			fail++;
		printf("%-*s  %-9s  %10s  %8s  %11s  %s\n", wn, it->img->name, action_name(it),
		       size, dur, rate, detail);
	}
	printf("\n%d uploaded, %d skipped, %d failed; files changed: %s\n", up, skip, fail,
	       changed ? "yes" : "no");
}

/* Every name of --only / --skip must be an image of the manifest. */
static int check_names(const struct manifest *m, const char *flag, const char **names, size_t n,
                       struct err *e)
{
	for (size_t i = 0; i < n; i++)
		if (!manifest_find_image(m, names[i])) {
			const char *s = manifest_suggest_image(m, names[i]);
			return err_set(e, ERR_USAGE, "--%s %s: no image of that name in %s%s%s%s",
			               flag, names[i], m->path, s ? " (did you mean " : "",
			               s ? s : "", s ? "?)" : "");
		}
	return 0;
}

static int named(const char **names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(names[i], name))
			return 1;
	return 0;
}

static int select_items(const struct manifest *m, const struct sync_args *a, struct item **out,
                        size_t *n, struct err *e)
{
	struct item *v;
	size_t k = 0;
	if (check_names(m, "only", a->only, a->nonly, e) ||
	    check_names(m, "skip", a->skip, a->nskip, e))
		return -1;
	v = calloc(m->nimages + 1, sizeof(*v));
	if (!v)
		return err_set(e, ERR_IO, "out of memory");
	for (size_t i = 0; i < m->nimages; i++) {
		const char *name = m->images[i].name;
		if ((!a->nonly || named(a->only, a->nonly, name)) &&
		    !named(a->skip, a->nskip, name))
			v[k++].img = &m->images[i];
	}
	*out = v;
	*n = k;
	return 0;
}

/* The action as --json and the job summary name it. */
static const char *action_word(const struct item *it, int dry_run)
{
	if (it->action == ACT_FAILED || it->files_failed)
		return "failed";
	if (it->action == ACT_PREVIEW)
		return "preview";
	if (dry_run)
		return it->action == ACT_SKIP ? "skip" : "upload";
	return it->action == ACT_SKIP ? "skipped" : "uploaded";
}

static void print_json(const char *manifest, const struct item *items, size_t n, int dry_run,
                       int changed)
{
	json_t *doc = json_pack("{s:s, s:b, s:b}", "manifest", manifest, "dryRun", dry_run,
	                        "filesChanged", changed);
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		const struct item *it = &items[i];
		json_t *o = json_pack("{s:s, s:s, s:s}", "name", it->img->name, "destination",
		                      it->img->destination, "action", action_word(it, dry_run));
		if (it->action == ACT_FAILED || it->files_failed)
			json_object_set_new(o, "error", json_string(it->e.msg));
		else
			json_object_set_new(o, "error", json_null());
		if (it->reason[0])
			json_object_set_new(o, "reason", json_string(it->reason));
		if (!dry_run && it->action == ACT_UPLOAD && it->ok) {
			json_object_set_new(o, "size",
			                    json_integer((json_int_t)it->res.stored_bytes));
			json_object_set_new(o, "seconds", json_real(it->res.seconds));
			json_object_set_new(o, "checksum", json_string(it->res.checksum));
			if (it->res.manifest_checksum[0])
				json_object_set_new(o, "manifestChecksum",
				                    json_string(it->res.manifest_checksum));
		}
		json_array_append_new(arr, o);
	}
	json_object_set_new(doc, "images", arr);
	json_dumpf(doc, stdout, JSON_INDENT(2));
	fputc('\n', stdout);
	json_decref(doc);
}

/* The GitHub job summary: one row per image. */
static void write_summary(const char *manifest, const struct item *items, size_t n, int dry_run,
                          int changed)
{
	struct buf b = BUF_INIT;
	struct err e = {0};
	int rc = buf_appendf(&b, "### labctl images sync%s: `%s`\n\n", dry_run ? " (dry run)" : "",
	                     manifest);
	rc = rc || buf_appends(&b, "| Image | Destination | Action | Size | Time | Error |\n"
	                           "|---|---|---|--:|--:|---|\n");
	for (size_t i = 0; i < n && !rc; i++) {
		const struct item *it = &items[i];
		char size[32] = "", dur[32] = "";
		if (!dry_run && it->action == ACT_UPLOAD && it->ok) {
			size_format(it->res.stored_bytes, size, sizeof(size));
			progress_duration(it->res.seconds, dur, sizeof(dur));
		}
		rc = buf_appends(&b, "| ") || github_md_cell(&b, it->img->name) ||
		     buf_appends(&b, " | `") || github_md_cell(&b, it->img->destination) ||
		     buf_appendf(&b, "` | %s | %s | %s | ", action_word(it, dry_run), size, dur) ||
		     github_md_cell(&b, it->action == ACT_FAILED || it->files_failed ? it->e.msg
		                                                                     : "") ||
		     buf_appends(&b, " |\n");
	}
	rc = rc || buf_appendf(&b, "\nFiles changed: %s\n\n", changed ? "yes" : "no");
	if (rc)
		log_warn("the job summary could not be written: out of memory");
	else if (github_summary(b.data, b.len, &e))
		log_warn("the job summary could not be written: %s", e.msg);
	buf_free(&b);
}

/* --dry-run --offline: no bucket; every selected image's updateFile
 * rewrites, applied, as a preview of the pins a sync would write. */
static int preview_offline(const struct sync_args *a, const struct manifest *m, struct item *items,
                           size_t n, const char *root, int *changed, struct err *e)
{
	int failed = 0;
	if (!a->json)
		printf("Pin preview for %s (offline: the bucket is not contacted)\n", m->path);
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		it->action = ACT_PREVIEW;
		snprintf(it->reason, sizeof(it->reason), "offline: the bucket was not checked");
		if (!a->json)
			printf("  %s\n", it->img->name);
		if (update_files(it->img, root, 0, changed, &it->e)) {
			if (!a->json)
				printf("    updateFile problem: %s\n", it->e.msg);
			it->files_failed = 1;
			failed++;
		}
	}
	if (failed)
		return err_set(e, ERR_INVALID, "%d image%s could not be previewed (see above)",
		               failed, failed == 1 ? "" : "s");
	return 0;
}

static int do_sync(const struct common_opts *common, const struct sync_args *a,
                   const struct manifest *m, struct err *e)
{
	struct s3_config cfg = {0};
	struct s3 *s3 = NULL;
	struct item *items = NULL, **todo = NULL;
	struct runner r = {0};
	char *root = NULL;
	size_t n = 0, ntodo = 0;
	int changed = 0, failed = 0, reached = 0, rc = -1;

	if (select_items(m, a, &items, &n, e))
		return -1;
	if (manifest_repo_root(m->path, &root, e))
		goto out;
	if (a->offline) {
		rc = preview_offline(a, m, items, n, root, &changed, e);
		goto report;
	}
	if (cli_s3_config(common, &cfg, e))
		goto out;
	s3 = s3_open(&cfg, e);
	if (!s3)
		goto out;
	todo = calloc(n + 1, sizeof(*todo));
	if (!todo) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		plan_item(s3, &items[i], a->force);
		if (items[i].action == ACT_UPLOAD)
			todo[ntodo++] = &items[i];
	}
	if (a->dry_run) {
		if (!a->json)
			printf("Plan for %s (dry run: nothing is changed)\n", m->path);
		for (size_t i = 0; i < n; i++) {
			struct item *it = &items[i];
			const char *act = it->action == ACT_SKIP     ? "skip"
			                  : it->action == ACT_UPLOAD ? "upload"
			                                             : "ERROR";
			if (!a->json)
				printf("  %-24s %-6s %s -> images/%s: %s\n", it->img->name, act,
				       it->img->source.url, it->img->destination, it->reason);
			if (it->action == ACT_FAILED) {
				failed++;
				continue;
			}
			if (update_files(it->img, root, 1, &changed, &it->e)) {
				if (!a->json)
					printf("    updateFile problem: %s\n", it->e.msg);
				it->files_failed = 1;
				failed++;
			}
		}
		if (!a->json) {
			size_t skip = 0;
			for (size_t i = 0; i < n; i++)
				skip += items[i].action == ACT_SKIP;
			printf("%zu to upload, %zu up to date, %d with errors%s\n", ntodo, skip,
			       failed, changed ? "; files would change" : "");
		}
		rc = failed ? -1 : 0;
		if (failed)
			err_set(e, ERR_NET, "the plan could not be made for every image");
		goto report;
	}
	for (size_t i = 0; i < n; i++)
		if (items[i].action == ACT_FAILED)
			progress_log("error: %s: %s", items[i].img->name, items[i].e.msg);
		else if (items[i].action == ACT_SKIP)
			progress_log("%s: %s", items[i].img->name, items[i].reason);
		else
			progress_log("%s: uploading (%s)", items[i].img->name, items[i].reason);
	r.todo = todo;
	r.n = ntodo;
	r.cfg = &cfg;
	r.ca_bundle = cli_ca_bundle(common);
	/* several images at once already keep the cores busy */
	r.xz_threads = a->xz_threads > 0 ? (int)a->xz_threads
	               : a->parallel > 1 ? 1
	                                 : SYNC_XZ_THREADS;
	/* several images at once: smaller parts keep memory near one image's;
	 * one image: the job's default (which depends on the decoder) */
	r.part_size = a->parallel > 1 ? PIPELINE_PART_SIZE : 0;
	run_uploads(&r, a->parallel > 0 ? a->parallel : 1);
	/* updateFile, in manifest order, for every image that is now in the bucket */
	for (size_t i = 0; i < n; i++) {
		struct err fe = {0};
		if (!items[i].ok)
			continue;
		if (update_files(items[i].img, root, 0, &changed, &fe)) {
			progress_log("error: %s", fe.msg);
			items[i].files_failed = 1;
			items[i].e = fe;
			if (items[i].action == ACT_SKIP)
				items[i].action = ACT_FAILED;
		}
	}
	for (size_t i = 0; i < n; i++) {
		failed += items[i].action == ACT_FAILED || items[i].files_failed;
		reached += items[i].ok;
	}
	/* uploads change records; a stale index (when the bucket has one) is
	 * caught up too, and nothing is written when it is current.  When no
	 * image could even be checked the bucket is out of reach: do not add a
	 * warning. */
	if (reached)
		bucket_index_refresh(&cfg, s3);
	if (!a->json)
		print_summary(items, n, changed);
	if (failed)
		err_set(e, ERR_NET, "%d of %zu image%s failed (see above)", failed, n,
		        n == 1 ? "" : "s");
	else
		rc = 0;
report:
	/* what the workflow needs, whatever happened to single images */
	if (a->json)
		print_json(m->path, items, n, a->dry_run, changed);
	write_summary(m->path, items, n, a->dry_run, changed);
	{
		struct err ge = {0};
		if (github_output("files_changed", changed ? "true" : "false", &ge)) {
			if (!rc)
				*e = ge;
			else
				log_error("%s", ge.msg);
			rc = -1;
		}
	}
out:
	s3_close(s3);
	s3_config_free(&cfg);
	free(root);
	free(todo);
	free(items);
	return rc;
}

int cmd_sync(int argc, char **argv)
{
	struct common_opts common = {0};
	struct sync_args a = {0};
	struct manifest *m = NULL;
	struct err e = {0};
	int rc = cli_parse(&sync_spec, argc, argv, &common, sync_opt, &a, &e);
	if (!rc && a.offline && !a.dry_run)
		rc = err_set(&e, ERR_USAGE,
		             "--offline needs --dry-run (a sync without the bucket uploads "
		             "nothing): labctl images sync --dry-run --offline");
	if (rc) {
		free(a.only);
		free(a.skip);
		return rc > 0 ? 0 : cli_fail(&e);
	}
	if (cli_load_manifest(&common, &m, &e)) {
		free(a.only);
		free(a.skip);
		return cli_fail(&e);
	}
	interrupt_install();
	rc = do_sync(&common, &a, m, &e) ? cli_fail(&e) : 0;
	if (interrupted()) {
		log_error("interrupted by %s: the multipart uploads in flight were aborted; every "
		          "image not uploaded completely is as it was",
		          interrupted() == SIGINT ? "SIGINT" : "SIGTERM");
		rc = interrupt_status();
	}
	manifest_free(m);
	free(a.only);
	free(a.skip);
	return rc;
}
