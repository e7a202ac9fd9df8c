/* labctl images overlay: comes with the overlays issue; the flags of CLI.md
 * are accepted so that --help and usage errors already behave. */
#include "sync/cli.h"
#include "sync/commands.h"

#include <stdio.h>

enum { OPT_MOUNT = 1, OPT_OVERLAY_DIR, OPT_ONLY };

static const struct optdef overlay_opts[] = {
        {"mount", OPT_MOUNT, 1, "DIR", "where imgfs mounts the bucket"},
        {"overlay-dir", OPT_OVERLAY_DIR, 1, "DIR", "where the overlays are written"},
        CLI_OPT_MANIFEST,
        {"only", OPT_ONLY, 1, "NAME", "only this overlay (repeatable)"},
        CLI_OPT_END,
};

static const struct cmd_spec overlay_spec = {
        "images overlay",
        "--mount DIR --overlay-dir DIR [--manifest PATH] [--only NAME]...",
        "Create the qcow2 overlays of spec.overlays[] on top of their bases on an imgfs\n"
        "mount, with a provenance file next to each.  (Not implemented yet.)",
        overlay_opts,
};

static int overlay_opt(void *ud, int id, const char *v, struct err *e)
{
	(void)ud;
	(void)id;
	(void)v;
	(void)e;
	return 0;
}

int cmd_overlay(int argc, char **argv)
{
	struct common_opts common = {0};
	struct err e = {0};
	int rc = cli_parse(&overlay_spec, argc, argv, &common, overlay_opt, NULL, &e);
	if (rc)
		return rc > 0 ? 0 : cli_fail(&e);
	fprintf(stderr, "labctl images overlay: not implemented yet\n");
	return 1;
}
