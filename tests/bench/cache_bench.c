/* Block cache benchmark: the SQLite block cache against a plain file, in the
 * same run, on the same disk, reported as ratios (HACKING.md).
 *
 * For each block size (default 1 MiB, 256 KiB and 64 KiB: one cache row per
 * block), insert SIZE MiB of distinct blocks through cache_put_ref() and compare
 * with writing the same bytes to a file (write + fdatasync).  Then read
 * everything back sequentially and in a random order, with 1 and 4 reader
 * threads, after dropping the page cache (cold, needs root) and again warm,
 * against pread() of the same bytes from the plain file.
 *
 * Also what the cache's writes would cost outside SQLite: the CPU of writing
 * the same bytes to a file with an fdatasync per 4 MiB (a cache batch),
 * through the page cache and around it (O_DIRECT), into new blocks and over
 * the blocks of the file already there.
 *
 * Each figure is the best of --runs runs (default 3), the cache and the file
 * runs interleaved, so that other work on the machine disturbs both alike.
 *
 *   cache_bench [--dir DIR] [--size MIB] [--block KIB]... [--threads N]... [--runs N] [--keep]
 */
#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache.h"
#include "store/cache/cache_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)

struct opts {
	const char *dir;
	size_t size_mib;
	size_t blocks_kib[8];
	int nblock_sizes;
	int threads[4];
	int nthreads;
	int runs;
	int keep;
};

static int can_drop;

static void drop_caches(void)
{
	int fd;
	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd < 0 || write(fd, "3", 1) != 1)
		can_drop = 0;
	if (fd >= 0)
		close(fd);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
	for (; i < n; i++)
		p[i] = (unsigned char)(x >> (8 * (i & 7)));
}

/* ---- readers ---- */

struct job {
	struct cache *c; /* or */
	int fd;
	const unsigned char (*keys)[CACHE_KEY_LEN];
	const size_t *order;
	size_t from, to, bs;
	int verify;
	size_t errors;
};

static void *read_worker(void *p)
{
	struct job *j = p;
	unsigned char *buf = aligned_alloc(4096, j->bs), d[32];
	struct err e = {0};
	for (size_t k = j->from; k < j->to; k++) {
		size_t i = j->order[k];
		if (j->c) {
			if (cache_get(j->c, j->keys[i], buf, j->bs, &e) != 1)
				j->errors++;
			else if (j->verify) {
				hash_sha256(buf, j->bs, d);
				j->errors += memcmp(d, j->keys[i], 32) != 0;
			}
		} else {
			if (pread(j->fd, buf, j->bs, (off_t)(i * j->bs)) != (ssize_t)j->bs)
				j->errors++;
		}
	}
	free(buf);
	return NULL;
}

/* MB/s of reading all n blocks in `order` with `threads` threads. */
static double run_reads(struct cache *c, int fd, const unsigned char (*keys)[CACHE_KEY_LEN],
                        const size_t *order, size_t n, size_t bs, int threads, int verify)
{
	pthread_t th[16];
	struct job jobs[16];
	size_t errors = 0;
	double t0 = time_mono(), dt;
	for (int t = 0; t < threads; t++) {
		jobs[t] = (struct job){.c = c,
		                       .fd = fd,
		                       .keys = keys,
		                       .order = order,
		                       .from = n * (size_t)t / (size_t)threads,
		                       .to = n * (size_t)(t + 1) / (size_t)threads,
		                       .bs = bs,
		                       .verify = verify};
		pthread_create(&th[t], NULL, read_worker, &jobs[t]);
	}
	for (int t = 0; t < threads; t++) {
		pthread_join(th[t], NULL);
		errors += jobs[t].errors;
	}
	dt = time_mono() - t0;
	if (errors)
		fprintf(stderr, "cache_bench: %zu failed reads\n", errors);
	return (double)n * (double)bs / 1e6 / dt;
}

/* CPU seconds of this process per GiB for writing data to path in blocks of
 * bs, with an fdatasync per 4 MiB as the cache commits (its batch) and at the
 * end: through the page cache or around it (O_DIRECT), into a new file or
 * over the blocks of the one there (in_place), as a full cache reuses its
 * space.  fdatasync does the writeback in this process, so its CPU counts.
 * -1 when the file system refuses O_DIRECT. */
static double file_write_cpu(const char *path, const unsigned char *data, size_t total, size_t bs,
                             int direct, int in_place)
{
	const size_t batch = 4u << 20;
	int fd = open(path, O_WRONLY | O_CREAT | (in_place ? 0 : O_TRUNC) | (direct ? O_DIRECT : 0),
	              0600);
	double t0;
	if (fd < 0 && direct && errno == EINVAL)
		return -1;
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	t0 = time_cpu();
	for (size_t off = 0; off + bs <= total; off += bs) {
		if (pwrite(fd, data + off, bs, (off_t)off) != (ssize_t)bs) {
			if (direct && errno == EINVAL) {
				close(fd);
				return -1;
			}
			perror("pwrite");
			exit(1);
		}
		if ((off + bs) % batch == 0 || off + 2 * bs > total)
			fdatasync(fd);
	}
	t0 = time_cpu() - t0;
	close(fd);
	return t0 / ((double)total / (1024.0 * MIB));
}

static double lowest(double a, double b)
{
	return a < 0 || (b >= 0 && b < a) ? b : a;
}

/* The blocks are slices of one buffer that outlives every cache. */
static void keep_data(void *arg)
{
	(void)arg;
}

static struct cache *open_cache(const char *dir)
{
	struct cache_opts o = {.dir = dir, .limit_bytes = 1ull << 40};
	struct cache *c;
	struct err e = {0};
	if (cache_open(&o, &c, &e)) {
		fprintf(stderr, "cache_bench: %s\n", e.msg);
		exit(1);
	}
	return c;
}

static void bench_block_size(const struct opts *o, const unsigned char *data, size_t total,
                             size_t bs)
{
	size_t n = total / bs;
	unsigned char(*keys)[CACHE_KEY_LEN] = malloc(n * CACHE_KEY_LEN);
	size_t *seq = malloc(n * sizeof(*seq)), *rnd = malloc(n * sizeof(*rnd));
	char cdir[4096], fpath[4096], wpath[4096];
	struct cache *c;
	struct cache_stats st;
	double t0, cache_w, file_w, fcpu[4] = {-1, -1, -1, -1};
	unsigned seed = 12345;
	int fd = -1;

	snprintf(cdir, sizeof(cdir), "%s/cache-%zuk", o->dir, bs / 1024);
	snprintf(fpath, sizeof(fpath), "%s/reference-%zuk.bin", o->dir, bs / 1024);
	nftw(cdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	for (size_t i = 0; i < n; i++) {
		hash_sha256(data + i * bs, bs, keys[i]);
		seq[i] = rnd[i] = i;
	}
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)rand_r(&seed) % (i + 1), t = rnd[i];
		rnd[i] = rnd[j];
		rnd[j] = t;
	}

	/* Writes: the reference file, then the cache. */
	file_w = cache_w = 0;
	for (int run = 0; run < o->runs; run++) {
		double w;
		fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0) {
			perror(fpath);
			exit(1);
		}
		t0 = time_mono();
		for (size_t i = 0; i < n; i++)
			if (write(fd, data + i * bs, bs) != (ssize_t)bs) {
				perror("write");
				exit(1);
			}
		fdatasync(fd);
		w = (double)total / 1e6 / (time_mono() - t0);
		if (w > file_w)
			file_w = w;
		if (run + 1 < o->runs)
			close(fd);

		nftw(cdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		sync();
		c = open_cache(cdir);
		t0 = time_mono();
		for (size_t i = 0; i < n; i++) {
			/* By reference, as imgfs queues its verified blocks
			 * (cache_put would add a 1 MiB allocation and copy per
			 * block).  A full queue drops: wait and retry, to measure
			 * the writer's sustained rate. */
			while (!cache_put_ref(c, keys[i], data + i * bs, bs, keep_data, NULL))
				usleep(500);
		}
		cache_flush(c);
		w = (double)total / 1e6 / (time_mono() - t0);
		if (w > cache_w)
			cache_w = w;
		cache_get_stats(c, &st);
		cache_close(c);

		/* What storing block data outside SQLite would cost: the same
		 * bytes and commits, to a file of its own (not the reference,
		 * which the reads below use). */
		snprintf(wpath, sizeof(wpath), "%s/writes-%zuk.bin", o->dir, bs / 1024);
		for (int k = 0; k < 4; k++)
			fcpu[k] = lowest(fcpu[k],
			                 file_write_cpu(wpath, data, total, bs, k >= 2, k & 1));
		unlink(wpath);
	}

	printf("\n== %zu KiB blocks: %zu rows, %.0f MiB ==\n", bs / 1024, n, total / MIB);
	printf("insert         cache %7.0f MB/s   file write+fdatasync %7.0f MB/s   ratio %.2f\n",
	       cache_w, file_w, cache_w / file_w);
	printf("write CPU s/GiB, fdatasync per 4 MiB: page cache %.2f new, %.2f in place; "
	       "O_DIRECT ",
	       fcpu[0], fcpu[1]);
	if (fcpu[2] < 0)
		printf("refused by the file system\n");
	else
		printf("%.2f new, %.2f in place\n", fcpu[2], fcpu[3]);
	struct stat sb;
	char dbp[4200];
	double files = 0, db = 0;
	snprintf(dbp, sizeof(dbp), "%s/" CACHE_DB_NAME, cdir);
	if (stat(dbp, &sb) == 0)
		files = db = (double)sb.st_size;
	snprintf(dbp, sizeof(dbp), "%s/" CACHE_BLOCKS_NAME, cdir);
	if (stat(dbp, &sb) == 0)
		files += (double)sb.st_size;
	printf("cache.db %.0f MiB and blocks.dat %.0f MiB for %.0f MiB of blocks (%.1f%% "
	       "overhead)\n",
	       db / MIB, (files - db) / MIB, st.bytes / MIB,
	       100.0 * (files - (double)st.bytes) / (double)st.bytes);

	printf("%-6s %-5s %7s %11s %11s %7s\n", "order", "state", "threads", "cache MB/s",
	       "file MB/s", "ratio");
	for (int pass = 0; pass < 2; pass++) {
		const char *state = pass == 0 ? "cold" : "warm";
		if (pass == 0 && !can_drop)
			continue;
		for (int oi = 0; oi < 2; oi++) {
			const size_t *order = oi ? rnd : seq;
			for (int ti = 0; ti < o->nthreads; ti++) {
				int th = o->threads[ti];
				double cm = 0, fm = 0, v;
				for (int run = 0; run < o->runs; run++) {
					if (pass == 0)
						drop_caches();
					c = open_cache(cdir);
					if (pass == 1) /* warm: one untimed pass first */
						run_reads(c, -1, (const void *)keys, order, n, bs,
						          th, 0);
					v = run_reads(c, -1, (const void *)keys, order, n, bs, th,
					              0);
					cm = v > cm ? v : cm;
					cache_close(c);
					if (pass == 0)
						drop_caches();
					else
						run_reads(NULL, fd, NULL, order, n, bs, th, 0);
					v = run_reads(NULL, fd, NULL, order, n, bs, th, 0);
					fm = v > fm ? v : fm;
				}
				printf("%-6s %-5s %7d %11.0f %11.0f %7.2f\n", oi ? "random" : "seq",
				       state, th, cm, fm, cm / fm);
				fflush(stdout);
			}
		}
	}
	/* What checking each hit against its key would cost (warm, 1 thread). */
	c = open_cache(cdir);
	double plain = 0, ver = 0;
	for (int run = 0; run < o->runs; run++) {
		double v = run_reads(c, -1, (const void *)keys, seq, n, bs, 1, 0);
		plain = v > plain ? v : plain;
		v = run_reads(c, -1, (const void *)keys, seq, n, bs, 1, 1);
		ver = v > ver ? v : ver;
	}
	cache_close(c);
	printf("warm seq 1 thread with SHA-256 of every hit: %.0f MB/s (%.2f of without)\n", ver,
	       ver / plain);

	close(fd);
	if (!o->keep) {
		unlink(fpath);
		nftw(cdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	}
	free(keys);
	free(seq);
	free(rnd);
}

static void usage(void)
{
	fprintf(stderr, "usage: cache_bench [--dir DIR] [--size MIB] [--block KIB]... "
	                "[--threads N]... [--runs N] [--keep]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = {.dir = "/var/tmp/imgstore-cache-bench", .size_mib = 1024, .runs = 3};
	unsigned char *data;
	size_t total;

	log_init("cache_bench", LOG_LVL_WARN);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			o.dir = argv[++i];
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			o.size_mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--block") && i + 1 < argc && o.nblock_sizes < 8)
			o.blocks_kib[o.nblock_sizes++] = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc && o.nthreads < 4)
			o.threads[o.nthreads++] = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			o.runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--keep"))
			o.keep = 1;
		else
			usage();
	}
	if (!o.nblock_sizes) {
		o.blocks_kib[0] = 1024;
		o.blocks_kib[1] = 256;
		o.blocks_kib[2] = 64;
		o.nblock_sizes = 3;
	}
	if (!o.nthreads) {
		o.threads[0] = 1;
		o.threads[1] = 4;
		o.nthreads = 2;
	}
	if (o.runs < 1)
		usage();
	for (int i = 0; i < o.nthreads; i++)
		if (o.threads[i] < 1 || o.threads[i] > 16)
			usage();
	for (int i = 0; i < o.nblock_sizes; i++)
		if (o.blocks_kib[i] < 4 || (o.blocks_kib[i] & (o.blocks_kib[i] - 1)))
			usage();
	if (mkdir(o.dir, 0700) && errno != EEXIST) {
		perror(o.dir);
		return 1;
	}
	total = o.size_mib << 20;
	data = total ? aligned_alloc(4096, total) : NULL; /* O_DIRECT writes from it */
	if (!data || !total) {
		fprintf(stderr, "cache_bench: cannot allocate %zu MiB\n", o.size_mib);
		return 1;
	}
	for (size_t off = 0; off < total; off += 1 << 20)
		fill(data + off, total - off < (1u << 20) ? total - off : 1u << 20, off >> 20);
	can_drop = 1;
	drop_caches();
	printf("cache_bench: %zu MiB in %s, best of %d runs; cold figures %s\n", o.size_mib, o.dir,
	       o.runs, can_drop ? "after dropping the page cache" : "skipped (not root)");
	for (int i = 0; i < o.nblock_sizes; i++)
		bench_block_size(&o, data, total, o.blocks_kib[i] * 1024);
	free(data);
	if (!o.keep)
		rmdir(o.dir);
	return 0;
}
