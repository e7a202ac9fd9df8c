#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int err_vset(struct err *e, enum err_code code, const char *fmt, va_list ap)
{
	if (!e)
		return -1;
	e->code = code;
	e->http_status = 0;
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	return -1;
}

int err_set(struct err *e, enum err_code code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err_vset(e, code, fmt, ap);
	va_end(ap);
	return -1;
}

int err_errno(struct err *e, const char *fmt, ...)
{
	int saved = errno;
	char what[ERR_MSG_MAX / 2];
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return err_set(e, saved == ENOENT ? ERR_NOTFOUND : ERR_IO, "%s: %s", what, strerror(saved));
}

int err_prefix(struct err *e, const char *fmt, ...)
{
	char ctx[ERR_MSG_MAX];
	size_t n, old;
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof(ctx) - 2, fmt, ap);
	va_end(ap);
	memcpy(ctx + strlen(ctx), ": ", 3);
	n = strlen(ctx);
	if (n >= sizeof(e->msg) - 1)
		n = sizeof(e->msg) - 1;
	old = strnlen(e->msg, sizeof(e->msg) - 1);
	if (n + old > sizeof(e->msg) - 1)
		old = sizeof(e->msg) - 1 - n;
	memmove(e->msg + n, e->msg, old);
	memcpy(e->msg, ctx, n);
	e->msg[n + old] = '\0';
	return -1;
}

void err_clear(struct err *e)
{
	if (!e)
		return;
	e->code = ERR_OK;
	e->http_status = 0;
	e->msg[0] = '\0';
}

const char *err_code_name(enum err_code code)
{
	switch (code) {
	case ERR_OK: return "ok";
	case ERR_USAGE: return "usage";
	case ERR_INVALID: return "invalid";
	case ERR_IO: return "io";
	case ERR_NET: return "network";
	case ERR_AUTH: return "auth";
	case ERR_NOTFOUND: return "not found";
	case ERR_PRECONDITION: return "precondition";
	case ERR_INTEGRITY: return "integrity";
	case ERR_SERVER: return "server";
	}
	return "unknown";
}

int err_exit_code(const struct err *e)
{
	if (!e || e->code == ERR_OK)
		return 0;
	return (e->code == ERR_USAGE || e->code == ERR_INVALID) ? 2 : 1;
}
