#include "sync/commands.h"

#include <stdio.h>

int cmd_validate(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "labctl images validate: not implemented yet\n");
	return 1;
}
