#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>

static const char *log_prog = "imgstore";
static enum log_level log_level = LOG_LVL_INFO;
static int log_syslog, log_journal;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const int log_prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

int log_parse_level(const char *s, enum log_level *out)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	for (int i = 0; i <= LOG_LVL_DEBUG; i++)
		if (s && !strcmp(s, names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	return -1;
}

/* systemd sets JOURNAL_STREAM to "<st_dev>:<st_ino>" of the stream it
 * connected stdout/stderr to.  Compare with stderr itself: a child whose
 * stderr was redirected elsewhere inherits the variable but is not talking to
 * the journal, and a "<3>" there would be noise. */
static int stderr_is_journal(void)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char tail;
	if (!v || sscanf(v, "%llu:%llu%c", &dev, &ino, &tail) != 2)
		return 0;
	if (fstat(2, &st))
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *progname, enum log_level level)
{
	log_prog = progname;
	log_level = level;
	log_parse_level(getenv("IMGSTORE_LOG"), &log_level);
	log_journal = stderr_is_journal();
}

void log_set_level(enum log_level level)
{
	log_level = level;
}

void log_use_syslog(int on)
{
	log_syslog = on;
	if (on)
		openlog(log_prog, LOG_PID, LOG_DAEMON);
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	char line[2048], prefix[8] = "";
	if (level > log_level)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	/* Lines carry bucket keys and server messages, which anyone who can write
	 * the bucket chooses: a newline or escape in one must not start a forged
	 * line (with its own "<3>" priority) or drive the terminal. */
	for (char *p = line; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	if (log_syslog) {
		syslog(log_prio[level], "%s", line);
		return;
	}
	if (log_journal)
		snprintf(prefix, sizeof(prefix), "<%d>", log_prio[level]);
	pthread_mutex_lock(&log_lock);
	if (level == LOG_LVL_INFO)
		fprintf(stderr, "%s%s: %s\n", prefix, log_prog, line);
	else
		fprintf(stderr, "%s%s: %s: %s\n", prefix, log_prog, names[level], line);
	pthread_mutex_unlock(&log_lock);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
