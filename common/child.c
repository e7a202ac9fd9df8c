/* The child-process runner.  See child.h. */
#include "common/child.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int child_env_kept(const char *entry)
{
	static const char *const drop[] = {"E2_", "AWS_", "SOPS_AGE_KEY="};
	for (size_t k = 0; k < sizeof(drop) / sizeof(*drop); k++)
		if (!strncmp(entry, drop[k], strlen(drop[k])))
			return 0;
	return 1;
}

/* Our environment minus what child_env_kept drops (the strings are shared). */
static char **child_env(void)
{
	size_t n = 0, o = 0;
	char **env;
	while (environ[n])
		n++;
	env = calloc(n + 1, sizeof(*env));
	if (!env)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (child_env_kept(environ[i]))
			env[o++] = environ[i];
	return env;
}

/* Append what still fits under max.  A secret buffer that has to grow is
 * moved by hand: realloc would leave the old bytes in freed memory. */
static int keep(struct buf *b, const char *data, size_t n, size_t max, int secret, int *truncated)
{
	size_t room = b->len < max ? max - b->len : 0;
	if (n > room) {
		n = room;
		*truncated = 1;
	}
	if (!n)
		return 0;
	if (secret && b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;
		while (cap < b->len + n + 1)
			cap *= 2;
		if (!(p = malloc(cap)))
			return -1;
		if (b->data) {
			memcpy(p, b->data, b->len + 1);
			OPENSSL_cleanse(b->data, b->cap);
			free(b->data);
		}
		b->data = p;
		b->cap = cap;
	}
	return buf_append(b, data, n);
}

int child_run(char *const argv[], const struct child_opts *o, struct child_result *r, struct err *e)
{
	int in[2] = {-1, -1}, po[2] = {-1, -1}, pe[2] = {-1, -1};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int fa_ok = 0, attr_ok = 0, rc = -1, ws, serr;
	char **env = NULL;
	pid_t pid = -1;
	size_t written = 0;
	sigset_t mask, defs;

	*r = (struct child_result)CHILD_RESULT_INIT;
	/* stdin through a socket: send(MSG_NOSIGNAL) reports a child that quit
	 * without reading as EPIPE instead of raising SIGPIPE in us */
	if (o->in ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in)
	          : (in[1] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		err_set(e, ERR_IO, "opening standard input for %s: %s", argv[0], strerror(errno));
		goto out;
	}
	if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) {
		err_set(e, ERR_IO, "creating pipes for %s: %s", argv[0], strerror(errno));
		goto out;
	}
	if (!(env = child_env()) || posix_spawn_file_actions_init(&fa)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	fa_ok = 1;
	if (posix_spawnattr_init(&attr)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	attr_ok = 1;
	sigemptyset(&mask);
	sigfillset(&defs);
	if (posix_spawn_file_actions_adddup2(&fa, in[1], 0) ||
	    posix_spawn_file_actions_adddup2(&fa, po[1], 1) ||
	    posix_spawn_file_actions_adddup2(&fa, pe[1], 2) ||
	    posix_spawn_file_actions_addclosefrom_np(&fa, 3) ||
	    posix_spawnattr_setsigmask(&attr, &mask) ||
	    posix_spawnattr_setsigdefault(&attr, &defs) ||
	    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) {
		err_set(e, ERR_IO, "setting up %s failed", argv[0]);
		goto out;
	}
	serr = posix_spawnp(&pid, argv[0], &fa, &attr, argv, env);
	if (serr) {
		pid = -1;
		if (serr == ENOENT)
			err_set(e, ERR_NOTFOUND, "%s: program not found", argv[0]);
		else
			err_set(e, ERR_IO, "starting %s: %s", argv[0], strerror(serr));
		goto out;
	}
	close(in[1]);
	close(po[1]);
	close(pe[1]);
	in[1] = po[1] = pe[1] = -1;
	if (o->in && o->inlen == 0) {
		close(in[0]);
		in[0] = -1;
	}
	while (po[0] >= 0 || pe[0] >= 0) {
		struct pollfd pf[3];
		int np = 0;
		if (in[0] >= 0)
			pf[np++] = (struct pollfd){.fd = in[0], .events = POLLOUT};
		if (po[0] >= 0)
			pf[np++] = (struct pollfd){.fd = po[0], .events = POLLIN};
		if (pe[0] >= 0)
			pf[np++] = (struct pollfd){.fd = pe[0], .events = POLLIN};
		if (poll(pf, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			err_set(e, ERR_IO, "waiting for %s: %s", argv[0], strerror(errno));
			goto out;
		}
		for (int i = 0; i < np; i++) {
			char chunk[16384];
			int *fd, *trunc;
			struct buf *dst;
			size_t max;
			ssize_t n;
			if (!pf[i].revents)
				continue;
			if (pf[i].fd == in[0]) {
				n = send(in[0], (const char *)o->in + written, o->inlen - written,
				         MSG_NOSIGNAL | MSG_DONTWAIT);
				if (n < 0 && (errno == EAGAIN || errno == EINTR))
					continue;
				if (n > 0)
					written += (size_t)n;
				/* a child that stops reading gets EOF; its exit status tells */
				if (n < 0 || written == o->inlen) {
					close(in[0]);
					in[0] = -1;
				}
				continue;
			}
			fd = pf[i].fd == po[0] ? &po[0] : &pe[0];
			dst = fd == &po[0] ? &r->out : &r->err;
			max = fd == &po[0] ? o->out_max : o->err_max;
			trunc = fd == &po[0] ? &r->out_truncated : &r->err_truncated;
			n = read(*fd, chunk, sizeof(chunk));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				close(*fd);
				*fd = -1;
				continue;
			}
			if (keep(dst, chunk, (size_t)n, max, o->secret, trunc)) {
				OPENSSL_cleanse(chunk, sizeof(chunk));
				err_set(e, ERR_IO, "out of memory");
				goto out;
			}
			if (o->secret)
				OPENSSL_cleanse(chunk, sizeof(chunk));
		}
	}
	if (in[0] >= 0) {
		close(in[0]);
		in[0] = -1;
	}
	while (waitpid(pid, &ws, 0) < 0) {
		if (errno != EINTR) {
			err_set(e, ERR_IO, "waiting for %s: %s", argv[0], strerror(errno));
			pid = -1;
			goto out;
		}
	}
	pid = -1;
	r->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
	r->signal = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
	/* callers read the output as strings, also when there was none */
	if (buf_append(&r->out, "", 0) || buf_append(&r->err, "", 0)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	rc = 0;
out:
	if (pid > 0) {
		kill(pid, SIGKILL);
		while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
			;
	}
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (po[i] >= 0)
			close(po[i]);
		if (pe[i] >= 0)
			close(pe[i]);
	}
	if (fa_ok)
		posix_spawn_file_actions_destroy(&fa);
	if (attr_ok)
		posix_spawnattr_destroy(&attr);
	free(env);
	return rc;
}

void child_result_free(struct child_result *r)
{
	buf_free_secure(&r->out);
	buf_free_secure(&r->err);
}
