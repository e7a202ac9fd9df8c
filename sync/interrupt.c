#include "sync/interrupt.h"

#include <string.h>

static volatile sig_atomic_t caught;

static void on_signal(int sig)
{
	if (!caught)
		caught = sig;
}

void interrupt_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

int interrupted(void)
{
	return caught;
}

const volatile sig_atomic_t *interrupt_flag(void)
{
	return &caught;
}

int interrupt_status(void)
{
	return 128 + caught;
}
