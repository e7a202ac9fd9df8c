#include "sync/job.h"

#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "sync/fetch.h"
#include "sync/pipeline.h"
#include "sync/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *job_effective_checksum(const struct image_job *j)
{
	return j->expected && *j->expected ? j->expected : j->source_checksum;
}

int checksum_equal(const char *a, const char *b)
{
	return a && b && !strcasecmp(a, b);
}

struct job_state {
	const struct image_job *j;
	struct hash *src_hash;
	struct decomp *dec;
	struct pipeline *pipe;
	struct progress *prog;
	uint64_t src_bytes;
};

static int out_buffer(void *ud, void **buf, size_t *avail, struct err *e)
{
	return pipeline_buffer(ud, buf, avail, e);
}

static int out_commit(void *ud, size_t n, struct err *e)
{
	return pipeline_commit(ud, n, e);
}

static int sink(void *ud, const void *data, size_t n, struct err *e)
{
	struct job_state *s = ud;
	hash_update(s->src_hash, data, n);
	s->src_bytes += n;
	if (decomp_feed(s->dec, data, n, e))
		return -1;
	progress_update(s->prog, s->src_bytes);
	return 0;
}

static void on_size(void *ud, uint64_t total)
{
	struct job_state *s = ud;
	if (!s->prog) {
		char label[160];
		snprintf(label, sizeof(label), "%s", s->j->name);
		s->prog = progress_start(label, total);
	}
}

int job_run(const struct image_job *j, struct job_result *res, struct err *e)
{
	struct job_state s = {0};
	struct pipeline_opts po = {0};
	struct fetch_opts fo = {0};
	struct fetch_stats fs = {0};
	struct decomp_out out = {out_buffer, out_commit, NULL};
	struct record rec = {0};
	enum hash_alg src_alg, eff_alg;
	char src_hex[HASH_MAX_HEX], eff_hex[HASH_MAX_HEX], got[HASH_MAX_HEX];
	const char *eff = job_effective_checksum(j);
	double t0 = time_mono();
	int rc = -1;

	memset(res, 0, sizeof(*res));
	s.j = j;
	if (!j->source_checksum || hash_checksum_parse(j->source_checksum, &src_alg, src_hex))
		return err_set(e, ERR_INVALID, "%s: source.checksum '%s' is not ALG:HEX", j->name,
		               j->source_checksum ? j->source_checksum : "");
	if (hash_checksum_parse(eff, &eff_alg, eff_hex))
		return err_set(e, ERR_INVALID, "%s: checksum '%s' is not ALG:HEX", j->name, eff);
	s.src_hash = hash_new(src_alg);
	if (!s.src_hash) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	po.cfg = j->cfg;
	po.destination = j->destination;
	po.name = j->name;
	po.source_url = j->url;
	po.origin = RECORD_ORIGIN_MANIFEST;
	po.alg = eff_alg;
	po.expected = eff;
	po.workers = j->part_workers;
	po.part_size = j->part_size                                      ? j->part_size
	               : j->decompress == DECOMP_XZ && j->xz_threads > 1 ? JOB_XZ_PART_SIZE
	                                                                 : JOB_PART_SIZE;
	s.pipe = pipeline_new(&po, e);
	if (!s.pipe)
		goto out;
	out.ud = s.pipe;
	s.dec = decomp_new(j->decompress, j->xz_threads, &out, e);
	if (!s.dec)
		goto out;
	fo.url = j->url;
	fo.ca_bundle = j->ca_bundle;
	log_info("%s: downloading %s%s%s", j->name, j->url, j->decompress ? ", decompressing " : "",
	         j->decompress ? decomp_name(j->decompress) : "");
	if (fetch_get(&fo, sink, on_size, &s, &fs, e))
		goto out;
	if (!s.prog)
		on_size(&s, 0);
	if (decomp_finish(s.dec, e)) {
		err_prefix(e, "decompressing %s", j->url);
		goto out;
	}
	hash_final_hex(s.src_hash, got);
	if (strcasecmp(got, src_hex)) {
		err_set(e, ERR_INTEGRITY,
		        "source checksum mismatch for %s: the manifest says %s, the download has "
		        "%s:%s (nothing was stored)",
		        j->url, j->source_checksum, hash_alg_name(src_alg), got);
		goto out;
	}
	if (pipeline_finish(s.pipe, &rec, e))
		goto out;
	res->stored_bytes = rec.size;
	snprintf(res->checksum, sizeof(res->checksum), "%s", rec.checksum);
	snprintf(res->manifest_checksum, sizeof(res->manifest_checksum), "%s",
	         rec.manifest_checksum);
	rc = 0;
out:
	res->source_bytes = s.src_bytes;
	res->resumes = fs.resumes;
	res->seconds = time_mono() - t0;
	if (s.prog)
		progress_end(s.prog, rc ? "failed" : "synced");
	decomp_free(s.dec);
	pipeline_free(s.pipe); /* aborts the upload unless it finished */
	hash_free(s.src_hash);
	record_free(&rec);
	if (rc)
		err_prefix(e, "%s", j->name);
	return rc;
}
