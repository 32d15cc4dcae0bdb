/*
 * safetensorsfs: options, validation of SOURCE before anything is mounted,
 * then the session, served by loop.c.  Modelled on libfuse's passthrough_ll main.
 */
#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stddef.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gpu_direct/gpu.h"
#include "fs.h"
#include "loop.h"
#include "mountpoint.h"

#ifndef SAFETENSORSFS_VERSION
#define SAFETENSORSFS_VERSION "0.1.0"
#endif
/* Measured in docs/BENCHMARKS.md: a 16 MiB window lets the kernel keep 1 MiB requests in flight. */
#define DEFAULT_READ_AHEAD_KB 16384
#define READ_AHEAD_KB_MAX (1024u * 1024u)
/* A second of polling per request is already far past any use; larger values are typos. */
#define SPIN_US_MAX 1000000u
/* Every thread is started at mount and keeps a 1 MiB request buffer. */
#define MAX_THREADS_MAX 256u

#define OPT(t, p) {t, offsetof(struct fs_options, p), 1}
static const struct fuse_opt option_spec[] = {
	OPT("layout=%s", layout_name),
	OPT("read_ahead_kb=%u", read_ahead_kb),
	OPT("listviews", listviews),
	OPT("gpu=%s", gpu),
	/* As text, so that overflow and signs are caught (%u wraps them silently). */
	OPT("spin_us=%s", spin_us_arg),
	/* Taken here, not by libfuse, whose parser fills in 10 when it is not given. */
	OPT("max_threads=%s", max_threads_arg),
	OPT("max_upload=%s", max_upload_arg),
	FUSE_OPT_END,
};

static void usage(const char *prog)
{
	printf("usage: %s [options] SOURCE MOUNTPOINT\n\n"
	       "Mounts a .safetensors file, a shard index or a folder of shards as a read-only\ntree of tensor files.\n\n"
	       "safetensorsfs options:\n"
	       "    -o layout=tree|flat    tensor a.b.c as a/b/c (tree, default) or as one file\n"
	       "                           named a.b.c in the root (flat)\n"
	       "    -o read_ahead_kb=N     the mount's readahead window when run as root\n"
	       "                           (default %u; 0 keeps the kernel's)\n"
	       "    -o listviews           list each tensor's NAME.npy view in directories\n"
	       "    -o gpu=auto|cuda|hip|host|none  the default device of /.control uploads (auto)\n"
	       "    -o max_upload=SIZE     bytes /.control buffers may hold together; K, M, G\n"
	       "                           suffixes (default: half the RAM, /dev/shm's size)\n"
	       "    -o spin_us=N           after a quick request, poll N microseconds for the next\n"
	       "                           before sleeping (default %u; 0 on one CPU; 0: never)\n"
	       "    -o max_threads=N       threads serving requests, 1 to 256 (default: one per\n"
	       "                           CPU, 4 to 8; libfuse's text below says 10)\n"
	       "    -o splice_write        splice tensor bytes into replies (default: off;\n"
	       "                           -o no_splice_write turns it off)\n\n",
	       prog, DEFAULT_READ_AHEAD_KB, LOOP_DEFAULT_SPIN_US);
}

static void version(void)
{
	printf("safetensorsfs %s\nlibfuse %s\ngpu backends: %s\n", SAFETENSORSFS_VERSION,
	       fuse_pkgversion(), gpu_built_backends());
}

/* The first non-option is SOURCE; the second is left for fuse_parse_cmdline. */
static int take_source(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct fs_options *opt = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !opt->source) {
		opt->source = strdup(arg);
		return 0;
	}
	return 1;
}

static int fail(const char *what, const char *why)
{
	fprintf(stderr, "safetensorsfs: %s: %s\n", what, why);
	return 1;
}

/* "-o fsname=SOURCE,subtype=safetensorsfs", with the commas libfuse splits on escaped. */
static int add_fsname(struct fuse_args *args, const char *source)
{
	size_t n = strlen(source);
	char *o = malloc(2 * n + 64), *p;
	int rc;

	if (!o)
		return -1;
	p = o + sprintf(o, "-osubtype=safetensorsfs,fsname=");
	for (size_t i = 0; i < n; i++) {
		if (source[i] == ',' || source[i] == '\\')
			*p++ = '\\';
		*p++ = source[i];
	}
	*p = '\0';
	rc = fuse_opt_add_arg(args, o);
	free(o);
	return rc;
}

/* The CPUs this process may run on (taskset, cpusets), not all the machine has. */
static unsigned usable_cpus(void)
{
	cpu_set_t set;
	long online = sysconf(_SC_NPROCESSORS_ONLN);

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned)CPU_COUNT(&set);
	return online > 0 ? (unsigned)online : 1;
}

/* A whole decimal number from 0 to MAX, or -1. */
static long parse_count(const char *text, unsigned long max)
{
	char *end;
	unsigned long v;

	if (!text || *text < '0' || *text > '9')
		return -1;
	errno = 0;
	v = strtoul(text, &end, 10);
	return errno || *end || v > max ? -1 : (long)v;
}

/* Threads and reply buffers: one per CPU, 4 to 8 (more fills at once than cores only take turns). */
static unsigned per_cpu(unsigned cpus)
{
	return cpus < 4 ? 4 : cpus > 8 ? 8 : cpus;
}

/* -o spin_us and -o max_threads, with their defaults by CPU count. */
static int loop_options(struct fs_options *opt, const struct fuse_cmdline_opts *cmd, unsigned cpus)
{
	long v;

	/* Polling on the only CPU would keep the caller from running. */
	opt->spin_us = cpus > 1 ? LOOP_DEFAULT_SPIN_US : 0;
	if (opt->spin_us_arg) {
		if ((v = parse_count(opt->spin_us_arg, SPIN_US_MAX)) < 0)
			return fail("spin_us", "must be 0 to 1000000 (microseconds)");
		opt->spin_us = (unsigned)v;
	}
	opt->max_threads = cmd->singlethread ? 1 : per_cpu(cpus);
	if (opt->max_threads_arg) {
		if ((v = parse_count(opt->max_threads_arg, MAX_THREADS_MAX)) < 1)
			return fail("max_threads", "must be 1 to 256");
		if (!cmd->singlethread)
			opt->max_threads = (unsigned)v;
	}
	return 0;
}

/* Mounts and serves until unmounted; SOURCE has been validated already. */
static int serve(struct fs *fs, struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
	struct fuse_session *se;
	int rc = 1;

	se = fuse_session_new(args, &fs_ops, sizeof(fs_ops), fs);
	if (!se)
		return 1;
	fs->se = se;
	if (fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, fs->mountpoint_fd_path[0] ? fs->mountpoint_fd_path : cmd->mountpoint) == 0) {
			fuse_daemonize(cmd->foreground);
			rc = loop_run(se, fs->opt.max_threads, fs->opt.spin_us, &fs->loop) < 0 ? 1 : 0;
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	fs->se = NULL;
	fuse_session_destroy(se);
	return rc;
}

static int setup(struct fs *fs, struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
	char err[ST_ERR_LEN], *abs;
	unsigned cpus = usable_cpus();

	if (fuse_opt_parse(args, &fs->opt, option_spec, take_source) < 0)
		return 1;
	if (!(fs->conn_opts = fuse_parse_conn_info_opts(args)) || fuse_parse_cmdline(args, cmd) != 0)
		return 1;
	if (cmd->show_help) {
		usage(args->argv[0]);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		return -1;
	}
	if (cmd->show_version) {
		version();
		return -1;
	}
	if (!fs->opt.source || !cmd->mountpoint) {
		fprintf(stderr, "usage: %s [options] SOURCE MOUNTPOINT (see --help)\n", args->argv[0]);
		return 1;
	}
	if (!fs->opt.layout_name || strcmp(fs->opt.layout_name, "tree") == 0)
		fs->layout = LAYOUT_TREE;
	else if (strcmp(fs->opt.layout_name, "flat") == 0)
		fs->layout = LAYOUT_FLAT;
	else
		return fail("layout", "must be tree or flat");
	if (loop_options(&fs->opt, cmd, cpus))
		return 1;
	if (fs->opt.read_ahead_kb > READ_AHEAD_KB_MAX) /* and max_readahead, in bytes, fits 32 bits */
		return fail("read_ahead_kb", "must be 0 to 1048576 (KiB)");
	fs->mountpoint_fd = mountpoint_open(cmd->mountpoint, fs->opt.source, fs->mountpoint_fd_path, err, sizeof(err));
	if (fs->mountpoint_fd < 0)
		return fail(cmd->mountpoint, err);
	if (source_open(fs->opt.source, &fs->src, err) < 0)
		return fail(fs->opt.source, err);
	if (fs->src.warning)
		fprintf(stderr, "safetensorsfs: %s: %s\n", fs->opt.source, fs->src.warning);
	if (tree_build(&fs->tree, &fs->src, fs->layout, err, sizeof(err)) < 0)
		return fail(fs->opt.source, err);
	abs = realpath(fs->opt.source, NULL);
	if (add_fsname(args, abs ? abs : fs->opt.source) < 0) {
		free(abs);
		return 1;
	}
	free(abs);
	if (view_table_init(&fs->views) < 0)
		return fail(fs->opt.source, "cannot set up the view table");
	fs->views_ready = 1;
	if (fs->opt.gpu && strcmp(fs->opt.gpu, "auto") && strcmp(fs->opt.gpu, "cuda") && strcmp(fs->opt.gpu, "hip") &&
	    strcmp(fs->opt.gpu, "host") && strcmp(fs->opt.gpu, "none"))
		return fail("gpu", "must be auto, cuda, hip, host or none");
	if (control_init(&fs->control, fs->opt.gpu, fs->opt.max_upload_arg) < 0)
		return fail(fs->opt.source, "cannot set up the control file (is -o max_upload a size?)");
	fs->control_ready = 1;
	size_t reply_max = REPLY_MAX_PAGES * (size_t)sysconf(_SC_PAGESIZE);
	if (bufpool_init(&fs->replies, per_cpu(cpus), reply_max) < 0)
		return fail(fs->opt.source, "out of memory for reply buffers");
	fs->replies_ready = 1;
	fs->uid = getuid();
	fs->gid = getgid();
	fs->mountpoint = cmd->mountpoint;
	fs->debug = cmd->debug;
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = {0};
	struct fs fs = {.opt = {.read_ahead_kb = DEFAULT_READ_AHEAD_KB}, .mountpoint_fd = -1};
	int rc = setup(&fs, &args, &cmd);

	if (rc == 0)
		rc = serve(&fs, &args, &cmd);
	if (fs.control_ready)
		control_free(&fs.control); /* every uploaded buffer goes with the mount */
	if (fs.views_ready)
		view_table_free(&fs.views);
	if (fs.replies_ready)
		bufpool_free(&fs.replies);
	free(fs.opt.gpu);
	free(fs.opt.spin_us_arg);
	free(fs.opt.max_threads_arg);
	free(fs.opt.max_upload_arg);
	tree_free(&fs.tree);
	source_close(&fs.src);
	free(fs.conn_opts);
	free(fs.opt.source);
	free(fs.opt.layout_name);
	if (fs.mountpoint_fd >= 0)
		close(fs.mountpoint_fd);
	free(cmd.mountpoint);
	fuse_opt_free_args(&args);
	return rc < 0 ? 0 : rc;
}
