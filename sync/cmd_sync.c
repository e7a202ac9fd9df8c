#include "sync/commands.h"

#include <stdio.h>

int cmd_sync(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "labctl images sync: not implemented yet\n");
	return 1;
}
