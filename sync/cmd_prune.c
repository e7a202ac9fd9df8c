#include "sync/commands.h"

#include <stdio.h>

int cmd_prune(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "labctl images prune: not implemented yet\n");
	return 1;
}
