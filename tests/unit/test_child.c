/* common/child: the child-process runner, against real programs (sh, cat,
 * env) from PATH. */
#include "check.h"
#include "common/child.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BIG (1u << 20) /* more than a pipe holds: stdin and stdout must interleave */

static const struct child_opts plain = {NULL, 0, 1u << 20, 1u << 20, 0};

static int run(char *const argv[], const struct child_opts *o, struct child_result *r,
               struct err *e)
{
	err_clear(e);
	return child_run(argv, o, r, e);
}

static void test_exit_status(void)
{
	char *t[] = {"true", NULL}, *f[] = {"false", NULL};
	char *three[] = {"sh", "-c", "exit 3", NULL};
	char *killed[] = {"sh", "-c", "kill -TERM $$", NULL};
	char *both[] = {"sh", "-c", "printf out; printf err >&2; exit 4", NULL};
	struct child_result r;
	struct err e;

	CHECK(run(t, &plain, &r, &e) == 0 && r.status == 0 && r.signal == 0);
	CHECK(r.out.data && r.out.len == 0 && r.out.data[0] == '\0');
	child_result_free(&r);
	CHECK(run(f, &plain, &r, &e) == 0 && r.status == 1);
	child_result_free(&r);
	CHECK(run(three, &plain, &r, &e) == 0 && r.status == 3);
	child_result_free(&r);
	CHECK(run(killed, &plain, &r, &e) == 0 && r.status == -1 && r.signal == SIGTERM);
	child_result_free(&r);
	CHECK(run(both, &plain, &r, &e) == 0 && r.status == 4);
	CHECK_STR(r.out.data, "out");
	CHECK_STR(r.err.data, "err");
	child_result_free(&r);
}

static void test_not_found(void)
{
	char *abs[] = {"/nonexistent/prog", NULL}, *path[] = {"no-such-program-imgstore", NULL};
	char *dir[] = {"/", NULL};
	struct child_result r;
	struct err e;

	CHECK(run(abs, &plain, &r, &e) == -1 && e.code == ERR_NOTFOUND);
	CHECK_STR(e.msg, "/nonexistent/prog: program not found");
	child_result_free(&r);
	CHECK(run(path, &plain, &r, &e) == -1 && e.code == ERR_NOTFOUND);
	child_result_free(&r);
	/* found but not runnable is another error */
	CHECK(run(dir, &plain, &r, &e) == -1 && e.code == ERR_IO && strstr(e.msg, "starting /"));
	child_result_free(&r);
}

static void test_stdin(void)
{
	char *cat[] = {"cat", NULL};
	unsigned char *in = malloc(BIG);
	struct child_opts o = plain;
	struct child_result r;
	struct err e;

	for (size_t i = 0; i < BIG; i++)
		in[i] = (unsigned char)(i * 7 + i / 251);
	o.in = in;
	o.inlen = BIG;
	o.out_max = BIG;
	CHECK(run(cat, &o, &r, &e) == 0 && r.status == 0);
	CHECK(r.out.len == BIG && !memcmp(r.out.data, in, BIG) && !r.out_truncated);
	child_result_free(&r);

	/* the same through the secret path (buffers moved by hand) */
	o.secret = 1;
	CHECK(run(cat, &o, &r, &e) == 0 && r.status == 0);
	CHECK(r.out.len == BIG && !memcmp(r.out.data, in, BIG));
	child_result_free(&r);

	/* empty stdin, and no stdin (/dev/null): cat ends at once */
	o.inlen = 0;
	CHECK(run(cat, &o, &r, &e) == 0 && r.status == 0 && r.out.len == 0);
	child_result_free(&r);
	CHECK(run(cat, &plain, &r, &e) == 0 && r.status == 0 && r.out.len == 0);
	child_result_free(&r);

	/* a child that never reads: we neither block nor die of SIGPIPE */
	{
		char *noread[] = {"true", NULL};
		o.inlen = BIG;
		CHECK(run(noread, &o, &r, &e) == 0 && r.status == 0);
		child_result_free(&r);
	}
	free(in);
}

static void test_caps(void)
{
	char *cat[] = {"cat", NULL};
	char *tostderr[] = {"sh", "-c", "cat >&2", NULL};
	char *in = malloc(BIG);
	struct child_opts o = plain;
	struct child_result r;
	struct err e;

	memset(in, 'x', BIG);
	in[0] = 'a';
	o.in = in;
	o.inlen = BIG;
	o.out_max = 1000;
	CHECK(run(cat, &o, &r, &e) == 0 && r.status == 0); /* read to the end */
	CHECK(r.out.len == 1000 && r.out_truncated && r.out.data[0] == 'a' &&
	      r.out.data[1000] == '\0');
	child_result_free(&r);

	o.out_max = BIG;
	o.err_max = 10;
	CHECK(run(tostderr, &o, &r, &e) == 0 && r.status == 0);
	CHECK(r.err.len == 10 && r.err_truncated && r.out.len == 0 && !r.out_truncated);
	child_result_free(&r);

	o.out_max = 0;
	CHECK(run(cat, &o, &r, &e) == 0 && r.status == 0 && r.out.len == 0 && r.out_truncated);
	child_result_free(&r);
	free(in);
}

static void test_environment(void)
{
	char *env[] = {"env", NULL};
	struct child_result r;
	struct err e;

	setenv("E2_SECRET_KEY", "e2-secret-value", 1);
	setenv("E2_ACCESS_KEY", "e2-access-value", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value", 1);
	setenv("SOPS_AGE_KEY", "AGE-SECRET-KEY-1VALUE", 1);
	setenv("SOPS_AGE_KEY_FILE", "/some/keys.txt", 1);
	setenv("IMGSTORE_TEST_KEPT", "kept", 1);
	CHECK(run(env, &plain, &r, &e) == 0 && r.status == 0);
	CHECK(!strstr(r.out.data, "E2_SECRET_KEY") && !strstr(r.out.data, "e2-secret-value"));
	CHECK(!strstr(r.out.data, "E2_ACCESS_KEY") && !strstr(r.out.data, "AWS_"));
	CHECK(!strstr(r.out.data, "AGE-SECRET-KEY") && !strstr(r.out.data, "SOPS_AGE_KEY="));
	CHECK(strstr(r.out.data, "\nSOPS_AGE_KEY_FILE=/some/keys.txt\n") ||
	      !strncmp(r.out.data, "SOPS_AGE_KEY_FILE=/some/keys.txt\n", 33));
	CHECK(strstr(r.out.data, "IMGSTORE_TEST_KEPT=kept\n") != NULL);
	CHECK(strstr(r.out.data, "PATH=") != NULL);
	child_result_free(&r);
	/* ours is untouched */
	CHECK_STR(getenv("E2_SECRET_KEY"), "e2-secret-value");

	CHECK(!child_env_kept("E2_ENDPOINT=x") && !child_env_kept("AWS_SESSION_TOKEN=t"));
	CHECK(child_env_kept("E2X=1") && child_env_kept("HOME=/root"));
	unsetenv("E2_SECRET_KEY");
	unsetenv("E2_ACCESS_KEY");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("SOPS_AGE_KEY");
	unsetenv("SOPS_AGE_KEY_FILE");
	unsetenv("IMGSTORE_TEST_KEPT");
}

/* A child starts with no blocked or ignored signal and no inherited
 * descriptor beyond 0-2, whatever the parent had. */
static void test_process_state(void)
{
	char *status[] = {"cat", "/proc/self/status", NULL};
	char *fds[] = {"ls", "/proc/self/fd", NULL};
	sigset_t block, old;
	struct child_result r;
	struct err e;
	const char *ign;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	CHECK(run(status, &plain, &r, &e) == 0 && r.status == 0);
	CHECK(strstr(r.out.data, "\nSigBlk:\t0000000000000000\n") != NULL);
	/* signals 1-31; glibc's posix_spawn leaves its own two internal
	 * real-time signals (32, 33) ignored */
	ign = strstr(r.out.data, "\nSigIgn:\t");
	CHECK(ign && (strtoull(ign + 9, NULL, 16) & 0x7fffffffu) == 0);
	child_result_free(&r);
	sigprocmask(SIG_SETMASK, &old, NULL);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGHUP, SIG_DFL);

	fd = open("/dev/null", O_RDONLY); /* no O_CLOEXEC on purpose */
	CHECK(fd >= 0 && dup2(fd, 57) == 57);
	CHECK(run(fds, &plain, &r, &e) == 0 && r.status == 0);
	CHECK(!strstr(r.out.data, "57\n"));
	CHECK(!strncmp(r.out.data, "0\n1\n2\n", 6));
	child_result_free(&r);
	close(57);
	close(fd);
}

int main(void)
{
	test_exit_status();
	test_not_found();
	test_stdin();
	test_caps();
	test_environment();
	test_process_state();
	return check_report("child");
}
