/* imgfs: a read-only FUSE mount of the bucket's images/ (CLI.md "imgfs").
 *
 * Start-up order matters for the exit code contract: the options, the
 * credentials, the cache, the first listing and the mount itself are all
 * done before the process detaches, so every error reaches the terminal with
 * exit 1 or 2.  Without -f the process forks first (threads do not survive a
 * fork) and the parent waits for the child to report the mount on a pipe. */
#include "fs/imgfs.h"

#include "common/log.h"
#include "common/opt.h"
#include "common/size.h"
#include "common/timefmt.h"
#include "store/secrets/credentials.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef IMGFS_SD_NOTIFY
#include <systemd/sd-daemon.h>
#endif

#ifndef IMGSTORE_VERSION
#define IMGSTORE_VERSION "0.1.0"
#endif

#define DEFAULT_CACHE_SIZE (10ull << 30)
#define DEFAULT_REFRESH_S  60
#define DEFAULT_TIMEOUT_S  30
#define MAX_SECONDS        (365L * 24 * 3600)
#define READ_AHEAD_KB      "4096" /* FUSE bdi readahead when root */

static const char usage_text[] =
        "usage: imgfs [--endpoint URL] [--bucket NAME] [--credentials PATH]\n"
        "             [--sops-age-key-file PATH] [--ca-bundle FILE]\n"
        "             [--cache-dir DIR] [--cache-size SIZE] [--refresh SECONDS]\n"
        "             [--timeout SECONDS] [--allow-unverified] [--pin GLOB]...\n"
        "             [--pin-file FILE] [--prefetch-rate RATE] [-f] [-v|-q|--log-level L]\n"
        "             [-o OPTION[=VALUE][,...]] MOUNTPOINT\n"
        "       imgfs SOURCE MOUNTPOINT -o OPTION[=VALUE][,...]   (mount -t fuse.imgfs)\n"
        "\n"
        "Mount images/ of the bucket read-only at MOUNTPOINT.  Blocks are fetched when\n"
        "read, checked against the image's checksum record and kept in a block cache.\n"
        "\n"
        "  --endpoint URL          S3 endpoint (else E2_ENDPOINT, else the credentials file)\n"
        "  --bucket NAME           bucket (else E2_BUCKET, else the credentials file)\n"
        "  --credentials PATH      SOPS-encrypted YAML: access_key, secret_key, endpoint, bucket\n"
        "  --sops-age-key-file PATH  age identities for --credentials (else SOPS_AGE_KEY_FILE)\n"
        "  --ca-bundle FILE        an extra CA certificate file for TLS\n"
        "  --cache-dir DIR         block cache (default /var/cache/imgfs for root,\n"
        "                          else $XDG_CACHE_HOME/imgfs)\n"
        "  --cache-size SIZE       cache bound, with K/M/G/T suffixes (default 10G)\n"
        "  --refresh SECONDS       re-read the listing this often (default 60; 0: only on\n"
        "                          SIGHUP)\n"
        "  --timeout SECONDS       how long an uncached read may retry before EIO (default 30)\n"
        "  --allow-unverified      also serve images that have no valid checksum record\n"
        "  --pin GLOB              keep images whose destination matches GLOB whole in the\n"
        "                          cache: fetched in the background, never evicted\n"
        "                          (repeatable)\n"
        "  --pin-file FILE         more pin globs, one a line (# comments); re-read on SIGHUP\n"
        "  --prefetch-rate RATE    fetch pinned images at most RATE bytes/s (K/M/G suffixes;\n"
        "                          default unlimited)\n"
        "  -f                      stay in the foreground (log to stderr)\n"
        "  -v, --verbose           log debug lines too;  -q, --quiet  warnings and errors only\n"
        "  --log-level LEVEL       error, warn, info (default) or debug\n"
        "  -o OPTION[,...]         any long option above as name=value with '_' for '-'\n"
        "                          (cache_size=50G), FUSE options (allow_other), and\n"
        "                          mount(8)'s generic ones (_netdev, nofail...: ignored)\n"
        "  SOURCE                  the bucket (wins over E2_BUCKET); 'imgfs': from the\n"
        "                          configuration\n"
        "  --help, --version\n"
        "\n"
        "Inside the mount: /.imgstore/stats (JSON counters), /.imgstore/metrics (the same,\n"
        "Prometheus text format), /.imgstore/by-sha256/<hex>,\n"
        "extended attributes user.imgstore.{checksum,source_url,uploaded_at,cached_bytes,\n"
        "pinned}.\n"
        "Unmount with: fusermount3 -u MOUNTPOINT\n";

static struct imgfs g_fs;
static int g_efd = -1; /* wakes the refresh thread: SIGHUP, shutdown */
static atomic_int g_stop;

static void notify_status(struct imgfs *fs, int ready, const struct err *e);

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "imgfs: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'imgfs --help' for more information.\n");
	return 2;
}

/* ---- detaching ---- */

static int status_fd = -1;

/* Fork; the parent waits for the child's verdict and exits with it. */
static void daemon_fork(void)
{
	int p[2];
	pid_t pid;
	if (pipe2(p, O_CLOEXEC)) {
		perror("imgfs: pipe");
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		perror("imgfs: fork");
		exit(1);
	}
	if (pid > 0) {
		unsigned char c;
		ssize_t n;
		int st = 0;
		close(p[1]);
		do
			n = read(p[0], &c, 1);
		while (n < 0 && errno == EINTR);
		if (n == 1)
			_exit(c);
		if (waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st))
			_exit(WEXITSTATUS(st));
		_exit(1);
	}
	close(p[0]);
	status_fd = p[1];
	setsid();
}

static void report_status(int code)
{
	unsigned char c = (unsigned char)code;
	if (status_fd < 0)
		return;
	if (write(status_fd, &c, 1) < 0) {
		/* the parent is gone: nothing to tell */
	}
	close(status_fd);
	status_fd = -1;
}

static void detach_stdio(void)
{
	int fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	if (chdir("/")) {
		/* harmless: paths in use are absolute */
	}
	log_use_syslog(1);
}

/* ---- options ---- */

struct cli {
	struct cred_opts cred; /* --endpoint, --bucket, --credentials, ... */
	const char *cache_dir;
	const char *source; /* the fstab form's SOURCE (mount.fuse3) */
	const char *mountpoint;
	char *mount_opts; /* copies of the -o values, split in place */
	char *fuse_opts;  /* comma-joined -o values */
	struct imgfs_opts *o;
};

static char *absolute(const char *path)
{
	char cwd[PATH_MAX], *out;
	if (path[0] == '/')
		return strdup(path);
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	if (asprintf(&out, "%s/%s", cwd, path) < 0)
		return NULL;
	return out;
}

static char *default_cache_dir(void)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char *out = NULL;
	if (geteuid() == 0)
		return strdup("/var/cache/imgfs");
	if (xdg && xdg[0] == '/') {
		if (asprintf(&out, "%s/imgfs", xdg) < 0)
			return NULL;
	} else if (home && *home) {
		if (asprintf(&out, "%s/.cache/imgfs", home) < 0)
			return NULL;
	}
	return out;
}

static int append_opt(char **dst, const char *opt)
{
	char *n;
	if (!*dst)
		return (*dst = strdup(opt)) ? 0 : -1;
	if (asprintf(&n, "%s,%s", *dst, opt) < 0)
		return -1;
	free(*dst);
	*dst = n;
	return 0;
}

enum {
	OPT_CACHE_DIR = 256,
	OPT_CACHE_SIZE,
	OPT_REFRESH,
	OPT_TIMEOUT,
	OPT_ALLOW_UNVERIFIED,
	OPT_VERSION,
	OPT_LOG_LEVEL,
	OPT_PIN,
	OPT_PIN_FILE,
	OPT_PREFETCH_RATE,
};

/* Every long option, by name (usage_text describes them): the command line
 * is read through this table, and so can any other syntax that names an
 * option (opt_find).  Short options: -f (--foreground), -h, -o. */
static const struct optdef imgfs_optdefs[] = {
        CRED_OPTDEF_ENDPOINT,
        CRED_OPTDEF_BUCKET,
        CRED_OPTDEF_CREDENTIALS,
        CRED_OPTDEF_AGE_KEY_FILE,
        CRED_OPTDEF_CA_BUNDLE,
        {"cache-dir", OPT_CACHE_DIR, 1, "DIR", NULL},
        {"cache-size", OPT_CACHE_SIZE, 1, "SIZE", NULL},
        {"refresh", OPT_REFRESH, 1, "SECONDS", NULL},
        {"timeout", OPT_TIMEOUT, 1, "SECONDS", NULL},
        {"allow-unverified", OPT_ALLOW_UNVERIFIED, 0, NULL, NULL},
        {"pin", OPT_PIN, 1, "GLOB", NULL},
        {"pin-file", OPT_PIN_FILE, 1, "FILE", NULL},
        {"prefetch-rate", OPT_PREFETCH_RATE, 1, "RATE", NULL},
        {"foreground", 'f', 0, NULL, NULL},
        {"verbose", 'v', 0, NULL, NULL},
        {"quiet", 'q', 0, NULL, NULL},
        {"log-level", OPT_LOG_LEVEL, 1, "LEVEL", NULL},
        OPT_DEF_HELP,
        {"version", OPT_VERSION, 0, NULL, NULL},
        OPT_DEF_END,
};

static int imgfs_opt(void *ud, int id, const char *v, struct err *e);

/* mount(8)'s generic options: mount.fuse3 passes them on, and the mount is
 * read-only whatever they say. */
static int generic_mount_opt(const char *name)
{
	static const char *const names[] = {
	        "rw",       "ro",         "dev",         "nodev",         "suid",     "nosuid",
	        "exec",     "noexec",     "atime",       "noatime",       "relatime", "norelatime",
	        "diratime", "nodiratime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
	        "sync",     "async",      "_netdev",     "nofail",        "noauto",   "auto",
	        "user",     "nouser",     "users",       "owner",         "group",    "defaults",
	        NULL};
	if (!strncmp(name, "x-systemd.", 10) || !strncmp(name, "comment=", 8))
		return 1;
	for (const char *const *n = names; *n; n++)
		if (!strcmp(name, *n))
			return 1;
	return 0;
}

/* -o OPTION[=VALUE][,...] (the form mount.fuse3 runs): imgfs's own long
 * options with '_' for '-', mount(8)'s generic options (ignored), and the
 * rest for libfuse, which names any it does not know. */
static int mount_opts(struct cli *c, const char *list, struct err *e)
{
	static const struct optdef *const tables[] = {imgfs_optdefs, NULL};
	char *copy, *item, *save = NULL;
	size_t n = strlen(list) + 1, used = 0;

	/* the values stay referenced (cache_dir...): keep every copy */
	for (const char *p = c->mount_opts; p && *p; p += strlen(p) + 1)
		used += strlen(p) + 1;
	if (!(copy = realloc(c->mount_opts, used + n + 1)))
		return err_set(e, ERR_USAGE, "out of memory");
	c->mount_opts = copy;
	item = copy + used;
	memcpy(item, list, n);
	item[n] = '\0';
	for (char *tok = strtok_r(item, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char name[64], *eq = strchr(tok, '=');
		size_t len = eq ? (size_t)(eq - tok) : strlen(tok);
		const struct optdef *d;
		if (generic_mount_opt(tok))
			continue;
		if (len == 0 || len >= sizeof(name))
			return err_set(e, ERR_USAGE, "-o: malformed option '%.200s'", tok);
		for (size_t i = 0; i < len; i++)
			name[i] = tok[i] == '_' ? '-' : tok[i];
		name[len] = '\0';
		d = opt_find(tables, name);
		if (!d || d->id == 'h' || d->id == OPT_VERSION || d->id == 'f') {
			/* a FUSE option (allow_other...): libfuse checks it */
			if (append_opt(&c->fuse_opts, tok))
				return err_set(e, ERR_USAGE, "out of memory");
			continue;
		}
		if (d->has_arg && (!eq || !eq[1]))
			return err_set(e, ERR_USAGE, "-o %.*s: a value is needed (%.*s=%s)",
			               (int)len, tok, (int)len, tok, d->metavar);
		if (!d->has_arg && eq)
			return err_set(e, ERR_USAGE, "-o %.*s: takes no value", (int)len, tok);
		if (imgfs_opt(c, d->id, eq ? eq + 1 : NULL, e))
			return err_prefix(e, "-o %.200s", tok);
	}
	return 0;
}

/* One option, whichever way it was given: 0, 1 to stop (--help,
 * --version), -1 with e set. */
static int imgfs_opt(void *ud, int id, const char *v, struct err *e)
{
	struct cli *c = ud;
	struct imgfs_opts *o = c->o;
	if (cred_opt_set(&c->cred, id, v))
		return 0;
	switch (id) {
	case OPT_CACHE_DIR: c->cache_dir = v; return 0;
	case OPT_CACHE_SIZE:
		if (size_parse(v, &o->cache_size) || o->cache_size < (1u << 20))
			return err_set(e, ERR_USAGE,
			               "--cache-size: '%s' is not a size of at least 1M (a number "
			               "with an optional K, M, G or T suffix)",
			               v);
		return 0;
	case OPT_REFRESH:
		if (seconds_parse(v, 0, MAX_SECONDS, &o->refresh_s))
			return err_set(e, ERR_USAGE,
			               "--refresh: '%s' is not a whole number of seconds", v);
		return 0;
	case OPT_TIMEOUT:
		if (seconds_parse(v, 1, MAX_SECONDS, &o->timeout_s))
			return err_set(e, ERR_USAGE,
			               "--timeout: '%s' is not a whole number of seconds (at least "
			               "1)",
			               v);
		return 0;
	case OPT_ALLOW_UNVERIFIED: o->allow_unverified = 1; return 0;
	case OPT_PIN: {
		char **nv;
		if (!*v)
			return err_set(e, ERR_USAGE, "--pin: an empty glob pins nothing");
		if (!(nv = realloc(o->pin_globs, (o->npin_globs + 1) * sizeof(*nv))))
			return err_set(e, ERR_USAGE, "out of memory");
		o->pin_globs = nv;
		if (!(nv[o->npin_globs] = strdup(v)))
			return err_set(e, ERR_USAGE, "out of memory");
		o->npin_globs++;
		return 0;
	}
	case OPT_PIN_FILE:
		free(o->pin_file);
		if (!(o->pin_file = absolute(v)))
			return err_set(e, ERR_USAGE, "--pin-file: %s: %s", v, strerror(errno));
		return 0;
	case OPT_PREFETCH_RATE:
		if (size_parse(v, &o->prefetch_rate) || !o->prefetch_rate)
			return err_set(
			        e, ERR_USAGE,
			        "--prefetch-rate: '%s' is not a rate of at least 1 byte/s (a "
			        "number with an optional K, M or G suffix)",
			        v);
		return 0;
	case 'f': o->foreground = 1; return 0;
	case 'v': log_set_level(LOG_LVL_DEBUG); return 0;
	case 'q': log_set_level(LOG_LVL_WARN); return 0;
	case OPT_LOG_LEVEL: {
		enum log_level l;
		if (log_parse_level(v, &l))
			return err_set(e, ERR_USAGE,
			               "--log-level: '%s' is not one of error, warn, info, debug",
			               v);
		log_set_level(l);
		return 0;
	}
	case 'o': return mount_opts(c, v, e);
	case 'h': fputs(usage_text, stdout); return 1;
	case OPT_VERSION: printf("imgfs %s\n", IMGSTORE_VERSION); return 1;
	}
	return err_set(e, ERR_USAGE, "unknown option");
}

static int imgfs_arg(void *ud, const char *arg, struct err *e)
{
	struct cli *c = ud;
	if (c->source)
		return err_set(e, ERR_USAGE, "unexpected argument '%s'", arg);
	if (c->mountpoint)
		c->source = c->mountpoint; /* imgfs SOURCE MOUNTPOINT */
	c->mountpoint = arg;
	return 0;
}

/* The FUSE options, checked before anything is fetched or forked: libfuse
 * parses them when a session is made (and names an unknown one on stderr). */
static int fuse_opts_check(const struct cli *c)
{
	static const struct fuse_lowlevel_ops none;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	if (!c->fuse_opts)
		return 0;
	if (!fuse_opt_add_arg(&args, "imgfs") && !fuse_opt_add_arg(&args, "-o") &&
	    !fuse_opt_add_arg(&args, c->fuse_opts))
		se = fuse_session_new(&args, &none, sizeof(none), NULL);
	fuse_opt_free_args(&args);
	if (!se)
		return usage_error("invalid FUSE options (-o %s)", c->fuse_opts);
	fuse_session_destroy(se);
	return 0;
}

/* 0 go on, else the exit code (-1: exit 0 after --help/--version). */
static int parse_args(int argc, char **argv, struct cli *c, struct imgfs_opts *o)
{
	const struct optdef *const tables[] = {imgfs_optdefs, NULL};
	const struct opt_parser p = {tables, "fo:hvq", imgfs_opt, imgfs_arg, c};
	struct err e = {0};
	int rc;

	o->cache_size = DEFAULT_CACHE_SIZE;
	o->refresh_s = DEFAULT_REFRESH_S;
	o->timeout_s = DEFAULT_TIMEOUT_S;
	c->o = o;
	rc = opt_parse(&p, argc, argv, &e);
	if (rc)
		return rc > 0 ? -1 : usage_error("%s", e.msg);
	if (!c->mountpoint)
		return usage_error("%s", "missing MOUNTPOINT");
	/* SOURCE names the bucket ("imgfs": the configuration does); an
	 * explicit --bucket / -o bucket= is more specific still */
	if (c->source && strcmp(c->source, "imgfs") && !c->cred.bucket)
		c->cred.bucket = c->source;
	return fuse_opts_check(c);
}

/* ---- refresh ---- */

static char *g_state_meta; /* IMGFS_STATE_META + endpoint and bucket */

static void persist(struct imgfs *fs, const struct state *st, const struct state *prev)
{
	struct err e = {0};
	if (prev && prev->text && !strcmp(prev->text, st->text))
		return;
	if (cache_meta_put(fs->cache, g_state_meta, st->text, strlen(st->text), &e))
		log_warn("saving the listing in the cache: %s", e.msg);
}

static int refresh(struct imgfs *fs, struct s3 **conn, int initial, struct err *e)
{
	struct state *st = NULL;
	if (!*conn && !(*conn = s3_open(&fs->cfg, e)))
		return err_prefix(e, "connecting to the bucket");
	if (state_fetch(&fs->cfg, *conn, fs->state, &st, e)) {
		atomic_fetch_add(&fs->refresh_errors, 1);
		atomic_store(&fs->bucket_ok, 0);
		return -1;
	}
	if (!atomic_exchange(&fs->bucket_ok, 1) && !initial)
		log_info("the bucket %s answers again: the listing is refreshed", fs->cfg.bucket);
	/* the stats never pair the new tree with the pins of the old one */
	pins_lock(fs);
	if (tree_apply(fs, st, fs->state, initial, e)) {
		pins_unlock(fs);
		state_free(st);
		return -1;
	}
	persist(fs, st, fs->state);
	state_free(fs->state);
	fs->state = st;
	pins_update(fs);
	pins_unlock(fs);
	atomic_fetch_add(&fs->refreshes, 1);
	atomic_store(&fs->last_refresh, time(NULL));
	return 0;
}

static void *refresh_thread(void *arg)
{
	struct imgfs *fs = arg;
	struct s3 *conn = NULL;
	struct pollfd pfd = {.fd = g_efd, .events = POLLIN};
	pthread_setname_np(pthread_self(), "imgfs-refresh");
	int ms =
	        fs->o.refresh_s > 0
	                ? (int)(fs->o.refresh_s > INT_MAX / 1000 ? INT_MAX : fs->o.refresh_s * 1000)
	                : -1;
	for (;;) {
		struct err e = {0};
		uint64_t v;
		int rc = poll(&pfd, 1, ms);
		if (atomic_load(&g_stop))
			break;
		if (rc > 0 && read(g_efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_debug("eventfd: %s", strerror(errno));
		if (rc < 0 && errno != EINTR)
			break;
		pthread_mutex_lock(&fs->refresh_mu);
		fs->refresh_started++;
		pthread_mutex_unlock(&fs->refresh_mu);
		if (refresh(fs, &conn, 0, &e)) {
			pins_lock(fs);
			pins_update(fs); /* SIGHUP re-reads the pin file too */
			pins_unlock(fs);
			log_warn("refreshing the listing: %s; keeping the current one", e.msg);
			if (e.code == ERR_NET && conn) {
				s3_close(conn); /* a fresh connection next time */
				conn = NULL;
			}
		} else {
			log_debug("listing refreshed: %zu images",
			          (size_t)atomic_load(&fs->nimages));
		}
		notify_status(fs, 0, &e);
		pthread_mutex_lock(&fs->refresh_mu);
		fs->refresh_done = fs->refresh_started;
		pthread_cond_broadcast(&fs->refresh_cv);
		pthread_mutex_unlock(&fs->refresh_mu);
	}
	if (conn)
		s3_close(conn);
	return NULL;
}

int imgfs_refresh_wait(struct imgfs *fs, long timeout_s)
{
	uint64_t one = 1, target;
	struct timespec until;
	int rc = 0;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_s;
	pthread_mutex_lock(&fs->refresh_mu);
	target = fs->refresh_started + 1;
	pthread_mutex_unlock(&fs->refresh_mu);
	if (write(g_efd, &one, sizeof(one)) < 0)
		return -1;
	pthread_mutex_lock(&fs->refresh_mu);
	while (rc == 0 && fs->refresh_done < target && !atomic_load(&g_stop))
		rc = pthread_cond_timedwait(&fs->refresh_cv, &fs->refresh_mu, &until);
	rc = fs->refresh_done >= target ? 0 : -1;
	pthread_mutex_unlock(&fs->refresh_mu);
	return rc;
}

static void on_sighup(int sig)
{
	uint64_t one = 1;
	(void)sig;
	if (write(g_efd, &one, sizeof(one)) < 0) {
		/* nothing to do in a signal handler */
	}
}

/* ---- the FUSE bdi readahead (root only) ---- */

static void unescape_mountinfo(char *s)
{
	char *w = s;
	for (char *r = s; *r;) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] && r[3]) {
			*w++ = (char)(((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
}

static void raise_readahead(const char *mountpoint)
{
	FILE *f;
	char line[4096], dev[64] = "";
	if (geteuid() != 0)
		return;
	/* /proc/self/mountinfo: no FUSE request (stat() of the mount point would
	 * need the loop that is not running yet) */
	if (!(f = fopen("/proc/self/mountinfo", "re")))
		return;
	while (fgets(line, sizeof(line), f)) {
		char mm[64], root[PATH_MAX], mp[PATH_MAX];
		if (sscanf(line, "%*s %*s %63s %4095s %4095s", mm, root, mp) != 3)
			continue;
		unescape_mountinfo(mp);
		if (!strcmp(mp, mountpoint))
			snprintf(dev, sizeof(dev), "%s", mm); /* the last one is ours */
	}
	fclose(f);
	if (dev[0]) {
		char path[128];
		const char *kb = getenv("IMGFS_BDI_READ_AHEAD_KB");
		int fd;
		if (!kb || !*kb || strspn(kb, "0123456789") != strlen(kb))
			kb = READ_AHEAD_KB;
		snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
		if ((fd = open(path, O_WRONLY | O_CLOEXEC)) >= 0) {
			if (write(fd, kb, strlen(kb)) < 0)
				log_debug("%s: %s", path, strerror(errno));
			close(fd);
		}
	}
}

/* ---- telling systemd (Type=notify) ---- */

/* One sd_notify(3) message.  Without NOTIFY_SOCKET in the environment (not
 * started by systemd) or without libsystemd at build time nothing is sent. */
static void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void notify(const char *fmt, ...)
{
#ifdef IMGFS_SD_NOTIFY
	char msg[ERR_MSG_MAX + 64];
	va_list ap;
	int rc;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if ((rc = sd_notify(0, msg)) < 0)
		log_debug("sd_notify: %s", strerror(-rc));
#else
	(void)fmt;
#endif
}

static char g_status[160]; /* the last STATUS= sent; the refresh thread's after READY */

/* STATUS= from the listing's state; READY=1 along with it when `ready`.
 * `e`: why the last listing failed, or NULL. */
static void notify_status(struct imgfs *fs, int ready, const struct err *e)
{
	char s[sizeof(g_status)];
	size_t n = atomic_load(&fs->nimages);
	const char *pl = n == 1 ? "" : "s";
	if (atomic_load(&fs->bucket_ok))
		snprintf(s, sizeof(s), "serving %zu image%s", n, pl);
	else if (!e || e->code == ERR_NET || e->code == ERR_SERVER)
		snprintf(s, sizeof(s), "bucket unreachable, serving cached data (%zu image%s)", n,
		         pl);
	else
		snprintf(s, sizeof(s),
		         "re-reading the listing failed (%s), serving the last one "
		         "(%zu image%s)",
		         err_code_name(e->code), n, pl);
	if (ready)
		notify("READY=1\nSTATUS=%s", s);
	else if (strcmp(s, g_status))
		notify("STATUS=%s", s);
	memcpy(g_status, s, sizeof(s));
}

/* ---- the mount point ---- */

/* The type of the file system mounted last (on top) at the canonical path
 * `path`, from /proc/self/mountinfo; "" when none. */
static void mounted_type(const char *path, char *type, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	type[0] = '\0';
	if (!f)
		return;
	while (getline(&line, &cap, f) > 0) {
		char mp[PATH_MAX], t[64];
		const char *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 ||
		    sscanf(sep + 3, "%63s", t) != 1)
			continue;
		unescape_mountinfo(mp);
		if (!strcmp(mp, path))
			snprintf(type, len, "%s", t);
	}
	free(line);
	fclose(f);
}

/* Lazily unmount the dead FUSE mount at `path`: root directly, others
 * through fusermount3 (the setuid helper libfuse uses itself). */
static int unmount_dead(const char *path, struct err *e)
{
	char *argv[] = {"fusermount3", "-u", "-z", "-q", "--", (char *)path, NULL};
	extern char **environ;
	pid_t pid;
	int st, rc;
	if (geteuid() == 0)
		return umount2(path, MNT_DETACH) ? err_errno(e, "umount %s", path) : 0;
	if ((rc = posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ)))
		return err_set(e, ERR_IO, "running fusermount3: %s", strerror(rc));
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return err_errno(e, "waiting for fusermount3");
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return err_set(e, ERR_IO, "fusermount3 -uz %s failed", path);
	return 0;
}

/* The canonical mount point.  A mount whose imgfs died (crash, kill -9,
 * OOM) answers everything with ENOTCONN until it is unmounted, which would
 * keep systemd's restart or a mount from fstab failing forever: it is
 * unmounted first.  A live imgfs mount stays; mounting over it is refused. */
static char *prepare_mountpoint(const char *arg, struct err *e)
{
	struct statfs sfs;
	char *mp, type[64];
	/* statfs always asks the daemon; stat may be answered from the
	 * kernel's attribute cache */
	if (statfs(arg, &sfs) && errno == ENOTCONN) {
		log_warn("%s: %s: the imgfs of an earlier mount is gone; unmounting it", arg,
		         strerror(ENOTCONN));
		if (unmount_dead(arg, e)) {
			err_prefix(e, "clearing the dead mount at %s (try fusermount3 -uz %s)", arg,
			           arg);
			return NULL;
		}
	}
	if (!(mp = realpath(arg, NULL))) {
		err_errno(e, "mount point %s", arg);
		return NULL;
	}
	mounted_type(mp, type, sizeof(type));
	if (!strcmp(type, "fuse.imgfs")) {
		err_set(e, ERR_IO,
		        "%s: imgfs is mounted there already (unmount it first: "
		        "fusermount3 -u %s)",
		        mp, mp);
		free(mp);
		return NULL;
	}
	return mp;
}

/* ---- main ---- */

static uint64_t env_mib(const char *name)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long n;
	if (!v || !*v)
		return 0;
	n = strtoull(v, &end, 10);
	return *end || n > (1ull << 20) ? 0 : (uint64_t)n << 20;
}

static int start(struct imgfs *fs, struct cli *c, struct err *e)
{
	struct cache_opts cop = {0};
	struct reader_opts ro = {0};
	struct state *prev = NULL;
	struct s3 *conn = NULL;
	char *dir = NULL;
	int rc = -1;

	if (s3_global_init(e))
		return -1;
	if (credentials_resolve(&c->cred, &fs->cfg, e))
		return -1;
	fs->cfg.retry_budget_s = (double)fs->o.timeout_s;
	if (fs->cfg.connect_timeout_s <= 0 || fs->cfg.connect_timeout_s > fs->o.timeout_s)
		fs->cfg.connect_timeout_s = (double)fs->o.timeout_s;
	if (fs->cfg.low_speed_timeout_s <= 0 || fs->cfg.low_speed_timeout_s > fs->o.timeout_s)
		fs->cfg.low_speed_timeout_s = (double)fs->o.timeout_s;
	s3_config_defaults(&fs->cfg);

	dir = c->cache_dir ? absolute(c->cache_dir) : default_cache_dir();
	if (!dir) {
		return err_set(e, ERR_USAGE,
		               "no cache directory: give --cache-dir DIR (or set HOME or "
		               "XDG_CACHE_HOME)");
	}
	fs->o.cache_dir = dir;
	cop.dir = dir;
	cop.limit_bytes = fs->o.cache_size;
	if (cache_open(&cop, &fs->cache, e)) {
		err_prefix(e, "opening the block cache in %s", dir);
		goto out;
	}
	ro.s3 = &fs->cfg;
	ro.cache = fs->cache;
	/* tuning knobs for benchmarks (undocumented on purpose: the defaults
	 * are the supported configuration) */
	ro.mem_bytes = env_mib("IMGFS_MEM_MIB");
	ro.readahead_max = env_mib("IMGFS_READAHEAD_MAX_MIB");
	ro.readahead_chunk = env_mib("IMGFS_READAHEAD_CHUNK_MIB");
	ro.fetch_threads = (unsigned)(env_mib("IMGFS_FETCH_THREADS") >> 20);
	if (reader_new(&ro, &fs->reader, e))
		goto out;
	if (tree_init(fs, e))
		goto out;

	/* the first listing; the cached one when the bucket does not answer */
	if (asprintf(&g_state_meta, "%s%s %s", IMGFS_STATE_META, fs->cfg.endpoint, fs->cfg.bucket) <
	    0) {
		g_state_meta = NULL;
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	state_load(fs->cache, g_state_meta, &prev);
	fs->state = prev;
	if (refresh(fs, &conn, 1, e)) {
		/* only an unreachable bucket falls back; a refused or missing
		 * one is a configuration error */
		if (!prev || (e->code != ERR_NET && e->code != ERR_SERVER))
			goto out;
		log_warn("%s", e->msg);
		log_warn("the bucket does not answer: serving the listing cached in %s; cached "
		         "blocks are served, others fail with EIO until it is back",
		         dir);
		err_clear(e);
		if (tree_apply(fs, prev, NULL, 1, e))
			goto out;
	}
	if (pins_init(fs, e))
		goto out;
	pins_lock(fs);
	pins_update(fs);
	pins_unlock(fs);
	rc = 0;
out:
	if (conn)
		s3_close(conn);
	return rc;
}

static void pin_opts_free(struct imgfs_opts *o)
{
	for (size_t i = 0; i < o->npin_globs; i++)
		free(o->pin_globs[i]);
	free(o->pin_globs);
	o->pin_globs = NULL;
	o->npin_globs = 0;
	free(o->pin_file);
	o->pin_file = NULL;
}

static void stop_all(struct imgfs *fs)
{
	pins_stop(fs); /* it reads through the reader and holds versions */
	imgfs_release_handles(fs);
	tree_free(fs);
	reader_free(fs->reader);
	fs->reader = NULL;
	if (fs->cache)
		cache_close(fs->cache);
	fs->cache = NULL;
	state_free(fs->state);
	fs->state = NULL;
	s3_config_free(&fs->cfg);
	free(fs->o.cache_dir);
	fs->o.cache_dir = NULL;
	pin_opts_free(&fs->o);
	free(g_state_meta);
	g_state_meta = NULL;
}

int main(int argc, char **argv)
{
	struct imgfs *fs = &g_fs;
	struct cli c = {0};
	struct err e = {0};
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc = NULL;
	struct sigaction sa;
	pthread_t rth;
	int code, rth_started = 0, mounted = 0, sig_installed = 0;
	char *mopts = NULL, *mp = NULL;

	log_init("imgfs", LOG_LVL_INFO);
	code = parse_args(argc, argv, &c, &fs->o);
	if (code) {
		free(c.fuse_opts);
		free(c.mount_opts);
		pin_opts_free(&fs->o);
		return code < 0 ? 0 : code;
	}
	/* Block buffers come from the reader's slab (common/slab.h), not from
	 * malloc.  Anything of 768 KiB or more gets a mapping of its own, given
	 * back when freed: above all libfuse's 1 MiB + 4 KiB receive buffer of
	 * each FUSE thread, which comes and goes with the thread and, on the
	 * heap, left holes that smaller allocations then touched.  Below stays
	 * curl's 512 KiB receive buffer, which curl frees and mallocs again for
	 * every GET: as a mapping each GET paid its page faults again (0.1-0.2
	 * CPU s more per cold GiB).  Up to 16 MiB of freed heap is kept instead
	 * of handed back.  Figures in tests/bench/README.md ("A full cache's
	 * heap"). */
	mallopt(M_MMAP_THRESHOLD, 768 << 10);
	mallopt(M_ARENA_MAX, 4);
	mallopt(M_TRIM_THRESHOLD, 16 << 20);

	if (!(mp = prepare_mountpoint(c.mountpoint, &e))) {
		log_error("%s", e.msg);
		free(c.fuse_opts);
		free(c.mount_opts);
		pin_opts_free(&fs->o);
		return 1;
	}
	fs->o.mountpoint = mp;
	if (!fs->o.foreground)
		daemon_fork();

	fs->uid = getuid();
	fs->gid = getgid();
	fs->start_time = time(NULL);
	if ((g_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		err_errno(&e, "eventfd");
		goto fail;
	}
	/* SIGHUP means "re-read the listing", also during a long first one */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sighup;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGHUP, &sa, NULL);
	notify("STATUS=reading the bucket listing");
	if (start(fs, &c, &e))
		goto fail;

	if (asprintf(&mopts, "ro,fsname=imgfs:%s,subtype=imgfs,max_read=%d%s%s", fs->cfg.bucket,
	             IMGFS_MAX_READ, c.fuse_opts ? "," : "", c.fuse_opts ? c.fuse_opts : "") < 0 ||
	    fuse_opt_add_arg(&args, argv[0]) || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, mopts)) {
		err_set(&e, ERR_IO, "out of memory");
		goto fail;
	}
	fs->se = fuse_session_new(&args, &imgfs_ops, sizeof(imgfs_ops), fs);
	if (!fs->se) {
		err_set(&e, ERR_USAGE, "invalid FUSE options (-o %s)",
		        c.fuse_opts ? c.fuse_opts : "");
		goto fail;
	}
	if (fuse_session_mount(fs->se, fs->o.mountpoint)) {
		err_set(&e, ERR_IO,
		        "mounting %s failed (is it an empty directory, not mounted already, and "
		        "is /dev/fuse usable?)",
		        fs->o.mountpoint);
		goto fail;
	}
	mounted = 1;
	raise_readahead(fs->o.mountpoint);
	if (fuse_set_signal_handlers(fs->se)) {
		err_set(&e, ERR_IO, "installing signal handlers failed");
		goto fail;
	}
	sig_installed = 1;
	sigaction(SIGHUP, &sa, NULL); /* libfuse's handler would unmount */
	/* the kernel queues requests until the loop below runs: usable now */
	notify_status(fs, 1, NULL);

	if (pthread_create(&rth, NULL, refresh_thread, fs) == 0)
		rth_started = 1;
	else
		log_warn("no refresh thread: the listing will not be re-read");
	if (pins_start(fs, &e)) {
		log_warn("%s: pinned images are not fetched in the background", e.msg);
		err_clear(&e);
	}

	log_info("mounted %s/images/ at %s (%zu images, cache %s)", fs->cfg.bucket,
	         fs->o.mountpoint, (size_t)atomic_load(&fs->nimages), fs->o.cache_dir);
	if (!fs->o.foreground) {
		report_status(0);
		detach_stdio();
	}

	if (!(lc = fuse_loop_cfg_create())) {
		err_set(&e, ERR_IO, "out of memory");
		code = 1;
	} else {
		fuse_loop_cfg_set_idle_threads(lc, 8);
		fuse_loop_cfg_set_max_threads(lc, 32);
		code = fuse_session_loop_mt(fs->se, lc);
		/* a stop signal (systemctl stop, Ctrl-C) is the normal way out,
		 * like fusermount3 -u: Restart=on-failure must not restart */
		code = code == 0 || code == SIGTERM || code == SIGINT ? 0 : 1;
		fuse_loop_cfg_destroy(lc);
	}
	notify("STOPPING=1");
	goto done;

fail:
	code = err_exit_code(&e);
	if (e.msg[0])
		log_error("%s", e.msg);
	for (char *p = e.msg; (p = strchr(p, '\n'));)
		*p = ' '; /* a STATUS= value ends at the first newline */
	notify("STATUS=failed: %s", e.msg);
	report_status(code);
done:
	atomic_store(&g_stop, 1);
	if (rth_started) {
		uint64_t one = 1;
		if (write(g_efd, &one, sizeof(one)) < 0)
			log_debug("eventfd: %s", strerror(errno));
		pthread_join(rth, NULL);
	}
	if (fs->se) {
		if (sig_installed)
			fuse_remove_signal_handlers(fs->se);
		if (mounted)
			fuse_session_unmount(fs->se);
		fuse_session_destroy(fs->se);
	}
	fuse_opt_free_args(&args);
	free(mopts);
	free(c.fuse_opts);
	free(c.mount_opts);
	stop_all(fs);
	if (g_efd >= 0)
		close(g_efd);
	s3_global_cleanup();
	if (code == 0)
		log_info("unmounted %s", mp);
	free(mp);
	return code;
}
