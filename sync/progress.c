#include "sync/progress.h"

#include "common/log.h"
#include "common/size.h"
#include "common/timefmt.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIVE       32
#define REDRAW_EVERY_S 0.2
#define LOG_EVERY_S    10.0

struct progress {
	char label[128];
	uint64_t total, done;
	double start, last_log;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int tty = -1;
static struct progress *live[MAX_LIVE];
static int nlive, drawn;
static double last_draw;

static int is_tty(void)
{
	if (tty < 0) {
		const char *term = getenv("TERM");
		tty = isatty(STDERR_FILENO) && (!term || strcmp(term, "dumb"));
	}
	return tty;
}

void progress_rate(double bps, char *out, unsigned outlen)
{
	if (bps >= 1e9)
		snprintf(out, outlen, "%.2f GB/s", bps / 1e9);
	else
		snprintf(out, outlen, "%.1f MB/s", bps / 1e6);
}

void progress_duration(double s, char *out, unsigned outlen)
{
	long t = (long)(s + 0.5);
	if (t >= 3600)
		snprintf(out, outlen, "%ldh%02ldm", t / 3600, t / 60 % 60);
	else if (t >= 60)
		snprintf(out, outlen, "%ldm%02lds", t / 60, t % 60);
	else
		snprintf(out, outlen, "%.1fs", s);
}

static void describe(const struct progress *p, double now, char *out, size_t outlen)
{
	char done[32], total[32], rate[32], eta[32];
	double el = now - p->start;
	double bps = el > 0 ? p->done / el : 0;
	size_format(p->done, done, sizeof(done));
	progress_rate(bps, rate, sizeof(rate));
	if (p->total) {
		size_format(p->total, total, sizeof(total));
		if (bps > 0 && p->total > p->done)
			progress_duration((p->total - p->done) / bps, eta, sizeof(eta));
		else
			snprintf(eta, sizeof(eta), "-");
		snprintf(out, outlen, "%s: %s of %s (%3.0f%%)  %s  ETA %s", p->label, done, total,
		         100.0 * p->done / p->total, rate, eta);
	} else {
		snprintf(out, outlen, "%s: %s  %s", p->label, done, rate);
	}
}

/* Called with mu held: erase the live lines. */
static void erase(void)
{
	if (drawn)
		fprintf(stderr, "\033[%dA\r\033[J", drawn);
	drawn = 0;
}

static void draw(double now)
{
	char line[512];
	int cols = 100;
	const char *c = getenv("COLUMNS");
	if (c && atoi(c) > 20)
		cols = atoi(c);
	erase();
	for (int i = 0; i < nlive; i++) {
		describe(live[i], now, line, sizeof(line));
		fprintf(stderr, "%.*s\n", cols - 1, line);
	}
	drawn = nlive;
	fflush(stderr);
	last_draw = now;
}

struct progress *progress_start(const char *label, uint64_t total)
{
	struct progress *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	snprintf(p->label, sizeof(p->label), "%s", label);
	p->total = total;
	p->start = p->last_log = time_mono();
	pthread_mutex_lock(&mu);
	if (is_tty() && nlive < MAX_LIVE) {
		live[nlive++] = p;
		draw(p->start);
	}
	pthread_mutex_unlock(&mu);
	return p;
}

void progress_update(struct progress *p, uint64_t done)
{
	double now;
	if (!p)
		return;
	now = time_mono();
	pthread_mutex_lock(&mu);
	p->done = done;
	if (is_tty()) {
		if (now - last_draw >= REDRAW_EVERY_S)
			draw(now);
	} else if (now - p->last_log >= LOG_EVERY_S) {
		char line[512];
		describe(p, now, line, sizeof(line));
		p->last_log = now;
		log_info("%s", line);
	}
	pthread_mutex_unlock(&mu);
}

void progress_end(struct progress *p, const char *status)
{
	char size[32], rate[32], dur[32];
	double now, el;
	if (!p)
		return;
	now = time_mono();
	el = now - p->start;
	size_format(p->done, size, sizeof(size));
	progress_rate(el > 0 ? p->done / el : 0, rate, sizeof(rate));
	progress_duration(el, dur, sizeof(dur));
	pthread_mutex_lock(&mu);
	for (int i = 0; i < nlive; i++)
		if (live[i] == p) {
			memmove(live + i, live + i + 1, (nlive - i - 1) * sizeof(*live));
			nlive--;
			break;
		}
	if (is_tty())
		erase();
	if (!strcmp(status, "failed"))
		log_info("%s: failed after %s (%s)", p->label, size, dur);
	else
		log_info("%s: %s %s in %s (%s)", p->label, size, status, dur, rate);
	if (is_tty() && nlive)
		draw(now);
	pthread_mutex_unlock(&mu);
	free(p);
}

void progress_log(const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&mu);
	if (is_tty())
		erase();
	log_info("%s", line);
	if (is_tty() && nlive)
		draw(time_mono());
	pthread_mutex_unlock(&mu);
}
