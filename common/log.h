/* Logging to stderr (or syslog for a daemon).  Never log secrets. */
#ifndef IMGSTORE_COMMON_LOG_H
#define IMGSTORE_COMMON_LOG_H

#include <stdarg.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* progname prefixes every line; level from IMGSTORE_LOG (error|warn|info|debug)
 * overrides `level` when set.  When stderr is the systemd journal's stream
 * (JOURNAL_STREAM), every line starts with its syslog priority ("<3>"...), so
 * that `journalctl -p warning` finds warnings. */
void log_init(const char *progname, enum log_level level);
/* -v/-q/--log-level: set after log_init, they win over IMGSTORE_LOG. */
void log_set_level(enum log_level level);
/* "error", "warn", "info", "debug" -> 0; anything else -> -1. */
int log_parse_level(const char *s, enum log_level *out);
void log_use_syslog(int on);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap);

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
