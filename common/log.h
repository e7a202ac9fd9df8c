/* Logging to stderr (or syslog for a daemon).  Never log secrets. */
#ifndef IMGSTORE_COMMON_LOG_H
#define IMGSTORE_COMMON_LOG_H

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* progname prefixes every line; level from IMGSTORE_LOG (error|warn|info|debug)
 * overrides `level` when set. */
void log_init(const char *progname, enum log_level level);
void log_use_syslog(int on);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
