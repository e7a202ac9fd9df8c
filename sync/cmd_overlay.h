/* labctl images overlay: qcow2 overlays (spec.overlays[] of the manifest) on
 * top of bases read through an imgfs mount, each with a provenance file.
 *
 *   labctl images overlay --mount DIR --overlay-dir DIR [--manifest PATH]
 *                         [--only NAME]... [--rebase]
 *
 * The backing file of an overlay is <mount>/.imgstore/by-sha256/<hex>, the
 * immutable name of the base's stored bytes. */
#ifndef IMGSTORE_SYNC_CMD_OVERLAY_H
#define IMGSTORE_SYNC_CMD_OVERLAY_H

/* argv starts at "overlay"; returns the exit status (0, 1 work failed,
 * 2 usage error or invalid manifest). */
int cmd_overlay(int argc, char **argv);

#endif
