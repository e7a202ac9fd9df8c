/* Running another program (gpg, qemu-img, git) and collecting what it
 * prints: the one place imgstore starts a child process.
 *
 * argv[0] is looked up in PATH and run directly, never through a shell.  The
 * child gets an environment without anything that holds bucket secrets or key
 * material (E2_*, AWS_*, SOPS_AGE_KEY), a clear signal mask with every signal
 * at its default action (labctl ignores SIGPIPE; a child must not inherit
 * that), and no file descriptors but 0, 1 and 2. */
#ifndef IMGSTORE_COMMON_CHILD_H
#define IMGSTORE_COMMON_CHILD_H

#include "common/buf.h"
#include "common/err.h"

#include <stddef.h>

struct child_opts {
	const void *in; /* bytes for standard input; NULL: /dev/null */
	size_t inlen;
	size_t out_max; /* at most this much stdout is kept; the rest is read and dropped */
	size_t err_max; /* the same for stderr */
	int secret;     /* the output holds key material: no copy of it is left behind */
};

struct child_result {
	struct buf out, err; /* what was kept (NUL-terminated, possibly empty) */
	int out_truncated, err_truncated;
	int status; /* the exit status, or -1 when a signal ended the child */
	int signal; /* that signal, else 0 */
};

#define CHILD_RESULT_INIT                                                                          \
	{                                                                                          \
		BUF_INIT, BUF_INIT, 0, 0, 0, 0                                                     \
	}

/* Run argv to the end.  0 when it ran (whatever its exit status), -1 when it
 * could not be started or waited for: ERR_NOTFOUND exactly when argv[0] is
 * not found (the caller knows which package to name), else ERR_IO.  *r is
 * filled on success; release it with child_result_free either way. */
int child_run(char *const argv[], const struct child_opts *o, struct child_result *r,
              struct err *e);

/* Free the captured output, overwriting it first. */
void child_result_free(struct child_result *r);

/* 1 when a "NAME=value" environment entry is kept for a child, 0 when it
 * holds bucket secrets or key material. */
int child_env_kept(const char *entry);

#endif
