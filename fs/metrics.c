/* /.imgstore/metrics: the stats of /.imgstore/stats in the Prometheus text
 * exposition format (version 0.0.4), for node_exporter's textfile collector
 * or any scraper that reads a file.
 *
 * It is made from the same JSON object as the stats file, so the two never
 * disagree; the table below gives each field its metric name, type and help.
 * A numeric field without a table entry (a field added to the stats later)
 * is still exported, as a gauge under its own name. */
#include "fs/imgfs.h"

#include "common/buf.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define METRIC_PREFIX "imgstore_"

struct metric {
	const char *field; /* key in the stats object */
	const char *name;  /* after the prefix */
	const char *type;  /* "counter" or "gauge" */
	const char *help;
};

static const struct metric metrics[] = {
        {"images", "images", "gauge", "Images shown in the mount."},
        {"unverified_images", "unverified_images", "gauge",
         "Images shown without a checksum record (--allow-unverified)."},
        {"image_bytes", "image_bytes", "gauge", "Total size of the images shown in the mount."},
        {"cache_hits", "cache_hits_total", "counter",
         "Blocks served from memory or the block cache without a GET."},
        {"cache_misses", "cache_misses_total", "counter", "Blocks fetched from the bucket."},
        {"bytes_fetched", "fetched_bytes_total", "counter",
         "Block bytes received from the bucket."},
        {"verify_failures", "verify_failures_total", "counter",
         "Blocks from the bucket that did not match their record's hash."},
        {"cache_bytes", "cache_bytes", "gauge", "Bytes of blocks in the block cache."},
        {"cache_limit_bytes", "cache_limit_bytes", "gauge",
         "The block cache's bound (--cache-size)."},
        {"cache_inserts", "cache_inserts_total", "counter", "Blocks written to the block cache."},
        {"cache_evictions", "cache_evictions_total", "counter",
         "Blocks evicted from the block cache."},
        {"cache_dropped", "cache_dropped_total", "counter",
         "Verified blocks not cached because the cache writer was behind, or caching was "
         "stopped."},
        {"cache_verify_failures", "cache_verify_failures_total", "counter",
         "Blocks read back from the cache that did not match their hash (dropped)."},
        {"memory_hits", "memory_hits_total", "counter",
         "Blocks served from the in-memory block buffer."},
        {"memory_bytes", "memory_bytes", "gauge", "Bytes of block buffers held in memory."},
        {"memory_limit_bytes", "memory_limit_bytes", "gauge",
         "The budget of the block buffers in memory."},
        {"memory_peak_bytes", "memory_peak_bytes", "gauge",
         "The most bytes of block buffers held at once."},
        {"zero_blocks", "zero_blocks_total", "counter",
         "All-zero blocks served without a GET or the cache."},
        {"coalesced_reads", "coalesced_reads_total", "counter",
         "Reads that waited for a block another reader was fetching."},
        {"readahead_blocks", "readahead_blocks_total", "counter", "Blocks fetched by readahead."},
        {"fetch_errors", "fetch_errors_total", "counter",
         "GETs of image bytes that failed (network, changed object, short answer)."},
        {"gets", "gets_total", "counter", "Ranged GETs of image bytes."},
        {"requests", "requests_total", "counter",
         "HTTP requests for image bytes, retries included."},
        {"retries", "retries_total", "counter", "HTTP requests for image bytes that were retries."},
        {"refreshes", "refreshes_total", "counter", "Listings of the bucket applied."},
        {"refresh_errors", "refresh_errors_total", "counter",
         "Listings of the bucket that failed."},
        {"last_refresh", "last_refresh_timestamp_seconds", "gauge",
         "Unix time of the last listing applied (no sample before the first)."},
        {"pinned_images", "pinned_images", "gauge",
         "Images (current and kept versions) that --pin or --pin-file pins."},
        {"pinned_bytes", "pinned_bytes", "gauge", "Bytes of the pinned images."},
        {"pinned_cached_bytes", "pinned_cached_bytes", "gauge",
         "Bytes of the pinned images that are in the block cache."},
        {"bucket_reachable", "bucket_reachable", "gauge",
         "1 when the last listing and the last GET reached the bucket, else 0."},
};

static const struct metric *metric_of(const char *field)
{
	for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++)
		if (!strcmp(metrics[i].field, field))
			return &metrics[i];
	return NULL;
}

/* Stats keys are ours, but a name that the format cannot carry is skipped
 * rather than emitted broken. */
static int valid_name(const char *s)
{
	if (!*s)
		return 0;
	for (const char *p = s; *p; p++) {
		int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_';
		if (!alpha && !(p > s && *p >= '0' && *p <= '9'))
			return 0;
	}
	return 1;
}

static int family(struct buf *b, const char *name, const char *type, const char *help)
{
	return buf_appendf(b, "# HELP " METRIC_PREFIX "%s %s\n# TYPE " METRIC_PREFIX "%s %s\n",
	                   name, help, name, type);
}

char *imgfs_metrics_text(struct imgfs *fs, size_t *len)
{
	struct buf b = BUF_INIT;
	json_t *o = imgfs_stats_object(fs);
	const char *key;
	json_t *val;
	time_t last = atomic_load(&fs->last_refresh);
	char *out = NULL;
	int bad = !o;

	bad = bad || family(&b, "info", "gauge", "Always 1; the label names the imgfs version.") ||
	      buf_appendf(&b, METRIC_PREFIX "info{version=\"%s\"} 1\n", IMGSTORE_VERSION) ||
	      family(&b, "start_time_seconds", "gauge", "Unix time imgfs started.") ||
	      buf_appendf(&b, METRIC_PREFIX "start_time_seconds %lld\n", (long long)fs->start_time);
	json_object_foreach(o, key, val)
	{
		const struct metric *m = metric_of(key);
		const char *name = m ? m->name : key;
		char help[160];

		if (bad)
			break;
		if (!m && !json_is_integer(val) && !json_is_boolean(val))
			continue;
		if (!valid_name(name))
			continue;
		if (!m)
			snprintf(help, sizeof(help), "The field %s of /.imgstore/stats.", key);
		bad = family(&b, name, m ? m->type : "gauge", m ? m->help : help);
		if (bad)
			break;
		if (!strcmp(key, "last_refresh")) {
			if (last)
				bad = buf_appendf(&b, METRIC_PREFIX "%s %lld\n", name,
				                  (long long)last);
		} else if (json_is_boolean(val)) {
			bad = buf_appendf(&b, METRIC_PREFIX "%s %d\n", name, json_is_true(val));
		} else if (json_is_integer(val)) {
			bad = buf_appendf(&b, METRIC_PREFIX "%s %lld\n", name,
			                  (long long)json_integer_value(val));
		}
	}
	json_decref(o);
	if (bad) {
		buf_free(&b);
		return NULL;
	}
	*len = b.len;
	out = buf_steal(&b);
	return out;
}
