#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

static const char *log_prog = "imgstore";
static enum log_level log_level = LOG_LVL_INFO;
static int log_syslog;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_init(const char *progname, enum log_level level)
{
	const char *env = getenv("IMGSTORE_LOG");
	log_prog = progname;
	log_level = level;
	if (env) {
		if (!strcmp(env, "error"))
			log_level = LOG_LVL_ERROR;
		else if (!strcmp(env, "warn"))
			log_level = LOG_LVL_WARN;
		else if (!strcmp(env, "info"))
			log_level = LOG_LVL_INFO;
		else if (!strcmp(env, "debug"))
			log_level = LOG_LVL_DEBUG;
	}
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

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char line[2048];
	va_list ap;
	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_syslog) {
		syslog(prio[level], "%s", line);
		return;
	}
	pthread_mutex_lock(&log_lock);
	if (level == LOG_LVL_INFO)
		fprintf(stderr, "%s: %s\n", log_prog, line);
	else
		fprintf(stderr, "%s: %s: %s\n", log_prog, names[level], line);
	pthread_mutex_unlock(&log_lock);
}
