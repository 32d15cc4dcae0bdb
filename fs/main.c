/*
 * safetensorsfs: options, validation of SOURCE before anything is mounted,
 * then the session, served by loop.c.  Modelled on libfuse's passthrough_ll main.
 */
#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gpu_direct/gpu.h"
#include "dequant.h"
#include "folder.h"
#include "fs.h"
#include "loop.h"
#include "mountpoint.h"
#include "units.h"

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
/* (uid_t)-1 and (gid_t)-1 are no ids: chown(2) reads them as "leave it". */
#define ID_MAX 4294967294ul
/* The kernel reads at least this much at once (max_read), and refuses request buffers under
 * 8 KiB, which libfuse sizes to max_write and 4 KiB of header. */
#define MIN_IO 4096ul

/* libfuse's options that are looked at here as well (take_option), or refused. */
enum { KEY_FSNAME, KEY_SUBTYPE, KEY_AUTO_UNMOUNT, KEY_MAX_READ, KEY_MAX_WRITE, KEY_MAX_READAHEAD, KEY_RO, KEY_REFUSED };

#define OPT(t, p) {t, offsetof(struct fs_options, p), 1}
static const struct fuse_opt option_spec[] = {
	OPT("layout=%s", layout_name),
	OPT("variant=%s", variant),
	OPT("listviews", listviews),
	OPT("gpu=%s", gpu),
	/* Numbers as text, so that overflow and signs are caught (%u wraps -5 to 4294967291). */
	OPT("read_ahead_kb=%s", read_ahead_kb_arg),
	OPT("spin_us=%s", spin_us_arg),
	/* Taken here, not by libfuse, whose parser fills in 10 when it is not given. */
	OPT("max_threads=%s", max_threads_arg),
	OPT("max_upload=%s", max_upload_arg),
	/* sshfs's; libfuse has them only in its high-level API. */
	OPT("uid=%s", uid_arg),
	OPT("gid=%s", gid_arg),
	OPT("umask=%s", umask_arg),
	/* Remote sources. */
	OPT("cacert=%s", cacert),
	OPT("cache=%s", cache_dir),
	OPT("connect_timeout=%s", connect_timeout_arg),
	OPT("read_timeout=%s", read_timeout_arg),
	OPT("retries=%s", retries_arg),
	OPT("block_size=%s", block_size_arg),
	OPT("cache_size=%s", cache_size_arg),
	/* Quantized checkpoints. */
	OPT("dequantize=%s", dequantize),
	OPT("gptq_format=%s", gptq_format),
	OPT("ct_packing=%s", ct_packing),
	/* libfuse's, looked at here too and left for it (take_option) ... */
	FUSE_OPT_KEY("fsname=", KEY_FSNAME),
	FUSE_OPT_KEY("subtype=", KEY_SUBTYPE),
	FUSE_OPT_KEY("auto_unmount", KEY_AUTO_UNMOUNT),
	FUSE_OPT_KEY("max_read=", KEY_MAX_READ),
	FUSE_OPT_KEY("max_write=", KEY_MAX_WRITE),
	FUSE_OPT_KEY("max_readahead=", KEY_MAX_READAHEAD),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("-r", KEY_RO),
	/* ... or refused (refusals). */
	FUSE_OPT_KEY("blkdev", KEY_REFUSED),
	FUSE_OPT_KEY("blksize=", KEY_REFUSED),
	FUSE_OPT_KEY("max_idle_threads=", KEY_REFUSED),
	FUSE_OPT_END,
};

/* libfuse's options that cannot have their effect here, and why (one line each). */
static const struct {
	const char *name, *why;
} refusals[] = {
	{"blkdev", "SOURCE is a file, not the block device a fuseblk mount needs"},
	{"blksize", "only for block device mounts (-o blkdev), which this cannot be"},
	{"max_idle_threads", "not supported: the -o max_threads threads all start at mount and stay"},
};

/*
 * Every option once, ours and the FUSE ones checked with this daemon: libfuse's
 * fuse_cmdline_help() would list max_threads a second time (with its own default,
 * 10) and max_idle_threads, which is refused here.
 */
static void usage(const char *prog, unsigned long reply_max)
{
	printf("usage: %s [options] SOURCE MOUNTPOINT\n\n"
	       "Mounts a .safetensors file, a shard index or a folder of shards as a read-only\ntree of tensor files.\n\n"
	       "safetensorsfs options:\n"
	       "    -o layout=tree|flat    tensor a.b.c as a/b/c (tree, default) or as one file\n"
	       "                           named a.b.c in the root (flat)\n"
	       "    -o variant=NAME        in a folder, take *.NAME.safetensors (and the index\n"
	       "                           *.safetensors.index.NAME.json) over the plain files\n"
	       "    -o read_ahead_kb=N     the mount's readahead window when run as root\n"
	       "                           (default %u; 0 keeps the kernel's)\n"
	       "    -o listviews           list each tensor's NAME.npy view in directories\n"
	       "    -o dequantize=BF16|F16|F32  show each quantized layer (FP8, GPTQ, AWQ,\n"
	       "                           compressed-tensors, NVFP4, MXFP4, bitsandbytes)\n"
	       "                           as one dense tensor of that dtype, its parts hidden\n"
	       "    -o gptq_format=gptq|gptq_v2  GPTQ zero points, where no config says\n"
	       "    -o ct_packing=word|stream  compressed-tensors packing of 3/5/6/7 bits,\n"
	       "                           where no config says (stream from 0.17)\n"
	       "    -o gpu=auto|cuda|hip|host|none  the default device of /.control uploads (auto)\n"
	       "    -o max_upload=SIZE     bytes /.control buffers may hold together; K, M, G\n"
	       "                           suffixes (default: half the RAM, /dev/shm's size)\n"
	       "    -o spin_us=N           after a quick request, poll N microseconds for the next\n"
	       "                           before sleeping (default %u; 0 on one CPU; 0: never)\n"
	       "    -o max_threads=N       threads serving requests, 1 to 256 (default: one per\n"
	       "                           CPU, 4 to 8)\n"
	       "    -o splice_write        splice tensor bytes into replies (default: off;\n"
	       "                           -o no_splice_write turns it off)\n"
	       "    -o uid=N               the owner every file and directory shows, a number\n"
	       "    -o gid=N               their group, a number (default: the mounting user's)\n"
	       "    -o umask=M             octal bits cleared from every mode (files 0444,\n"
	       "                           directories 0555; /.control stays 0600)\n"
	       "Remote SOURCEs (http://, https://, s3://BUCKET/KEY or PREFIX/, hf://ORG/REPO):\n"
	       "    -o cacert=FILE         trust the CAs in FILE (default: the system's)\n"
	       "    -o connect_timeout=S   seconds to connect (default %u)\n"
	       "    -o read_timeout=S      seconds without a byte before a transfer is retried\n"
	       "                           (default %u)\n"
	       "    -o retries=N           more tries after a 5xx, 429 or cut connection, 0 to 20\n"
	       "                           (default %u); then the read fails with EIO\n"
	       "    -o block_size=SIZE     bytes fetched at once, a power of two, 4K to 64M\n"
	       "                           (default 1M)\n"
	       "    -o cache=DIR           keep fetched blocks in DIR across mounts\n"
	       "    -o cache_size=SIZE     bytes kept of fetched blocks: in DIR (default 10G),\n"
	       "                           else in memory (default 256M)\n"
	       "    Credentials: AWS_ACCESS_KEY_ID, AWS_PROFILE, ... as the AWS CLI; HF_TOKEN or\n"
	       "    huggingface_hub's token file; endpoints AWS_ENDPOINT_URL(_S3), HF_ENDPOINT\n\n"
	       "FUSE options:\n"
	       "    -h   --help            print help\n"
	       "    -V   --version         print version\n"
	       "    -d   -o debug          enable debug output (implies -f)\n"
	       "    -f                     foreground operation\n"
	       "    -s                     serve requests on one thread\n"
	       "    -o allow_other         allow access by all users\n"
	       "    -o allow_root          allow access by root\n"
	       "    -o auto_unmount        unmount when the daemon ends, also when killed\n"
	       "    -o default_permissions let the kernel check the modes\n"
	       "    -o fsname=NAME         the source in /proc/mounts (default: SOURCE's path)\n"
	       "    -o subtype=NAME        the type is fuse.NAME (default: safetensorsfs)\n"
	       "    -o max_read=N          largest read request, %lu to %lu bytes\n"
	       "                           (default: %lu)\n"
	       "    -o ro                  read-only to the kernel too, and no /.control (uploads):\n"
	       "                           the fewest requests, for fstab\n"
	       "The kernel's mount flags (noexec, noatime, ...) and libfuse's connection options\n"
	       "(max_write=N, max_background=N, splice_read, ...) are in safetensorsfs(1).\n",
	       prog, DEFAULT_READ_AHEAD_KB, LOOP_DEFAULT_SPIN_US, HTTP_DEFAULT_CONNECT_TIMEOUT,
	       HTTP_DEFAULT_READ_TIMEOUT, HTTP_DEFAULT_RETRIES, MIN_IO, reply_max, reply_max);
}

static void version(void)
{
	printf("safetensorsfs %s\nlibfuse %s\ngpu backends: %s\n", SAFETENSORSFS_VERSION,
	       fuse_pkgversion(), gpu_built_backends());
}

static int fail(const char *what, const char *why)
{
	fprintf(stderr, "safetensorsfs: %s: %s\n", what, why);
	return 1;
}

/* The VALUE of ARG, "NAME=VALUE", into *TEXT; 1 leaves ARG for libfuse, which acts on it. */
static int note_value(char **text, const char *arg)
{
	free(*text);
	*text = strdup(strchr(arg, '=') + 1);
	return *text ? 1 : -1;
}

/* The user's own -o NAME=VALUE (fsname, subtype): 1 leaves it for libfuse, whose mount(2)
 * would fail on an empty one with EINVAL. */
static int note_name(int *given, const char *arg, const char *name)
{
	*given = 1;
	return arg[strlen(name) + 1] ? 1 : -fail(name, "must not be empty");
}

/* Before anything else is looked at, so that nothing is mounted or opened for it. */
static int refuse(const char *arg)
{
	size_t n = strcspn(arg, "=");

	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
		if (strlen(refusals[i].name) == n && strncmp(arg, refusals[i].name, n) == 0)
			return -fail(refusals[i].name, refusals[i].why);
	return -1;
}

/* The first non-option is SOURCE (the second is left for fuse_parse_cmdline), and the KEY_ options. */
static int take_option(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct fs_options *opt = data;

	(void)outargs;
	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (opt->source)
			return 1;
		opt->source = strdup(arg);
		return 0;
	case KEY_FSNAME:
		return note_name(&opt->has_fsname, arg, "fsname");
	case KEY_SUBTYPE:
		return note_name(&opt->has_subtype, arg, "subtype");
	case KEY_AUTO_UNMOUNT:
		opt->auto_unmount = 1;
		return 1;
	case KEY_MAX_READ:
		return note_value(&opt->max_read_arg, arg);
	case KEY_MAX_WRITE:
		return note_value(&opt->max_write_arg, arg);
	case KEY_MAX_READAHEAD:
		return note_value(&opt->max_readahead_arg, arg);
	case KEY_RO:
		opt->read_only = 1;
		return 1;
	case KEY_REFUSED:
		return refuse(arg);
	}
	return 1;
}

/* "-o fsname=SOURCE" and "-o subtype=safetensorsfs" where the user gave none, with the commas
 * libfuse splits on escaped. */
static int add_fsname(struct fuse_args *args, const struct fs_options *opt, const char *source)
{
	size_t n = strlen(source);
	char *o, *p;
	int rc;

	if (!opt->has_subtype && fuse_opt_add_arg(args, "-osubtype=safetensorsfs") < 0)
		return -1;
	if (opt->has_fsname)
		return 0;
	if (!(o = malloc(2 * n + 16)))
		return -1;
	p = o + sprintf(o, "-ofsname=");
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

/* A whole number in BASE (10 or 8), from MIN to MAX, into *OUT: no sign, space or suffix. */
static bool parse_number(const char *text, int base, unsigned long min, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	if (!text || *text < '0' || *text > '9')
		return false;
	errno = 0;
	v = strtoul(text, &end, base);
	if (errno || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* Threads and reply buffers: one per CPU, 4 to 8 (more fills at once than cores only take turns). */
static unsigned per_cpu(unsigned cpus)
{
	return cpus < 4 ? 4 : cpus > 8 ? 8 : cpus;
}

/* -o spin_us and -o max_threads, with their defaults by CPU count. */
static int loop_options(struct fs_options *opt, const struct fuse_cmdline_opts *cmd, unsigned cpus)
{
	unsigned long v;

	/* Polling on the only CPU would keep the caller from running. */
	opt->spin_us = cpus > 1 ? LOOP_DEFAULT_SPIN_US : 0;
	if (opt->spin_us_arg) {
		if (!parse_number(opt->spin_us_arg, 10, 0, SPIN_US_MAX, &v))
			return fail("spin_us", "must be 0 to 1000000 (microseconds)");
		opt->spin_us = (unsigned)v;
	}
	opt->max_threads = cmd->singlethread ? 1 : per_cpu(cpus);
	if (opt->max_threads_arg) {
		if (!parse_number(opt->max_threads_arg, 10, 1, MAX_THREADS_MAX, &v))
			return fail("max_threads", "must be 1 to 256");
		if (!cmd->singlethread)
			opt->max_threads = (unsigned)v;
	}
	return 0;
}

/* -o read_ahead_kb, max_read, max_write and max_readahead: libfuse's %u would take -5. */
static int size_options(struct fs_options *opt, unsigned long reply_max)
{
	unsigned long v;
	char why[64];

	if (opt->read_ahead_kb_arg) {
		if (!parse_number(opt->read_ahead_kb_arg, 10, 0, READ_AHEAD_KB_MAX, &v))
			return fail("read_ahead_kb", "must be 0 to 1048576 (KiB)");
		opt->read_ahead_kb = (unsigned)v; /* and max_readahead, in bytes, fits 32 bits */
	}
	/* Past reply_max a request would not fit the reply buffers (or libfuse's request buffer). */
	snprintf(why, sizeof(why), "must be %lu to %lu (bytes)", MIN_IO, reply_max);
	if (opt->max_read_arg) {
		if (!parse_number(opt->max_read_arg, 10, MIN_IO, reply_max, &v))
			return fail("max_read", why);
		opt->max_read = (unsigned)v;
	}
	if (opt->max_write_arg && !parse_number(opt->max_write_arg, 10, MIN_IO, reply_max, &v))
		return fail("max_write", why);
	opt->max_readahead = UINT_MAX;
	if (opt->max_readahead_arg) {
		if (!parse_number(opt->max_readahead_arg, 10, 0, READ_AHEAD_KB_MAX * 1024ul, &v))
			return fail("max_readahead", "must be 0 to 1073741824 (bytes)");
		opt->max_readahead = (unsigned)v;
	}
	return 0;
}

/* -o cacert=, connect_timeout=, read_timeout=, retries=, block_size=, cache_size=. */
/* -o dequantize=, gptq_format=, ct_packing=: 0, or 1 once the error is said. */
static int dequant_options(const struct fs *fs, struct dequant_opts *dq)
{
	const struct fs_options *o = &fs->opt;

	*dq = (struct dequant_opts){.dtype = -1, .hints = {.gptq_v2 = -1, .ct_stream = -1}};
	if (o->dequantize) {
		int d = st_dtype_from_name(o->dequantize, strlen(o->dequantize));
		if (d != ST_BF16 && d != ST_F16 && d != ST_F32)
			return fail("dequantize", "must be BF16, F16 or F32");
	}
	if (o->gptq_format && strcmp(o->gptq_format, "gptq") && strcmp(o->gptq_format, "gptq_v2"))
		return fail("gptq_format", "must be gptq (v1 zero points, stored minus one) or gptq_v2");
	if (o->ct_packing && strcmp(o->ct_packing, "word") && strcmp(o->ct_packing, "stream"))
		return fail("ct_packing", "must be word (compressed-tensors before 0.17) or stream (0.17 on)");
	dq->dtype = o->dequantize ? st_dtype_from_name(o->dequantize, strlen(o->dequantize)) : -1;
	dq->hints.gptq_v2 = o->gptq_format ? strcmp(o->gptq_format, "gptq_v2") == 0 : -1;
	dq->hints.ct_stream = o->ct_packing ? strcmp(o->ct_packing, "stream") == 0 : -1;
	return 0;
}

static int remote_options(struct fs *fs)
{
	struct source_opts *o = &fs->source_opts;
	unsigned long v;
	uint64_t size;

	*o = (struct source_opts){.variant = fs->opt.variant, .block_size = STORE_DEFAULT_BLOCK,
				  .cache_size = fs->opt.cache_dir ? SOURCE_DEFAULT_DISK_CACHE : STORE_DEFAULT_CACHE,
				  .cache_dir = fs->opt.cache_dir,
				  .http = {fs->opt.cacert, HTTP_DEFAULT_CONNECT_TIMEOUT, HTTP_DEFAULT_READ_TIMEOUT,
					   HTTP_DEFAULT_RETRIES}};
	if (fs->opt.connect_timeout_arg) {
		if (!parse_number(fs->opt.connect_timeout_arg, 10, 1, 3600, &v))
			return fail("connect_timeout", "must be 1 to 3600 (seconds)");
		o->http.connect_timeout = (unsigned)v;
	}
	if (fs->opt.read_timeout_arg) {
		if (!parse_number(fs->opt.read_timeout_arg, 10, 1, 3600, &v))
			return fail("read_timeout", "must be 1 to 3600 (seconds)");
		o->http.read_timeout = (unsigned)v;
	}
	if (fs->opt.retries_arg) {
		if (!parse_number(fs->opt.retries_arg, 10, 0, 20, &v))
			return fail("retries", "must be 0 to 20");
		o->http.retries = (unsigned)v;
	}
	if (fs->opt.block_size_arg) {
		if (parse_size(fs->opt.block_size_arg, &size) < 0 || size < 4096 || size > (64u << 20) ||
		    (size & (size - 1)))
			return fail("block_size", "must be a power of two from 4K to 64M");
		o->block_size = (uint32_t)size;
	}
	if (fs->opt.cache_size_arg) {
		if (parse_size(fs->opt.cache_size_arg, &size) < 0 || size / STORE_MIN_BLOCKS < o->block_size)
			return fail("cache_size", "must be a size (K, M, G suffixes) of at least 16 blocks");
		o->cache_size = size;
	}
	if (fs->opt.cacert && access(fs->opt.cacert, R_OK) < 0)
		return fail("cacert", "cannot read that file");
	return 0;
}

/* A refusal's line names SOURCE once: remote errors start with the URL already. */
static int fail_source(const struct fs *fs, const char *err)
{
	if (http_is_url(fs->opt.source) && strstr(err, "://")) {
		fprintf(stderr, "safetensorsfs: %s\n", err);
		return 1;
	}
	return fail(fs->shown, err);
}

/* -o uid=, gid= (numbers, as sshfs takes them) and umask= (octal): what every node but /.control shows. */
static int owner_options(struct fs *fs)
{
	unsigned long v;

	fs->uid = fs->file_uid = getuid();
	fs->gid = fs->file_gid = getgid();
	if (fs->opt.uid_arg) {
		if (!parse_number(fs->opt.uid_arg, 10, 0, ID_MAX, &v))
			return fail("uid", "must be a user id number, 0 to 4294967294");
		fs->file_uid = (uid_t)v;
	}
	if (fs->opt.gid_arg) {
		if (!parse_number(fs->opt.gid_arg, 10, 0, ID_MAX, &v))
			return fail("gid", "must be a group id number, 0 to 4294967294");
		fs->file_gid = (gid_t)v;
	}
	if (fs->opt.umask_arg) {
		if (!parse_number(fs->opt.umask_arg, 8, 0, 0777, &v))
			return fail("umask", "must be octal, 0 to 0777");
		fs->umask_bits = (mode_t)v;
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
	struct dequant_opts dq;
	unsigned cpus = usable_cpus();
	size_t reply_max = REPLY_MAX_PAGES * (size_t)sysconf(_SC_PAGESIZE);

	if (fuse_opt_parse(args, &fs->opt, option_spec, take_option) < 0)
		return 1;
	if (!(fs->conn_opts = fuse_parse_conn_info_opts(args)) || fuse_parse_cmdline(args, cmd) != 0)
		return 1;
	if (cmd->show_help) {
		usage(args->argv[0], reply_max);
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
	if (loop_options(&fs->opt, cmd, cpus) || size_options(&fs->opt, reply_max) || owner_options(fs))
		return 1;
	if (fs->opt.variant && !folder_variant_name(fs->opt.variant))
		return fail("variant", "must be a name such as fp16: a letter, then letters, digits or _");
	if (remote_options(fs) || dequant_options(fs, &dq))
		return 1;
	if (http_is_url(fs->opt.source))
		http_redact(fs->opt.source, fs->shown, sizeof(fs->shown));
	else
		snprintf(fs->shown, sizeof(fs->shown), "%s", fs->opt.source);
	fs->mountpoint_fd = mountpoint_open(cmd->mountpoint, fs->opt.source, fs->mountpoint_fd_path, err, sizeof(err));
	if (fs->mountpoint_fd < 0)
		return fail(cmd->mountpoint, err);
	/* auto_unmount mounts through fusermount3, also as root: a child process, to which our
	 * /proc/self/fd path means nothing.  It gets the path, and checks it itself. */
	if (fs->opt.auto_unmount)
		fs->mountpoint_fd_path[0] = '\0';
	if (source_open(fs->opt.source, &fs->source_opts, &fs->src, err) < 0)
		return fail_source(fs, err);
	if (fs->src.warning)
		fprintf(stderr, "safetensorsfs: %s: %s\n", fs->shown, fs->src.warning);
	if (dequant_attach(&fs->src, &dq, err) < 0)
		return fail(fs->shown, err);
	if (tree_build(&fs->tree, &fs->src, fs->layout, err, sizeof(err)) < 0)
		return fail(fs->shown, err);
	abs = http_is_url(fs->opt.source) ? NULL : realpath(fs->opt.source, NULL);
	if (add_fsname(args, &fs->opt, abs ? abs : fs->shown) < 0) {
		free(abs);
		return 1;
	}
	free(abs);
	if (view_table_init(&fs->views) < 0)
		return fail(fs->shown, "cannot set up the view table");
	fs->views_ready = 1;
	if (fs->opt.gpu && strcmp(fs->opt.gpu, "auto") && strcmp(fs->opt.gpu, "cuda") && strcmp(fs->opt.gpu, "hip") &&
	    strcmp(fs->opt.gpu, "host") && strcmp(fs->opt.gpu, "none"))
		return fail("gpu", "must be auto, cuda, hip, host or none");
	if (control_init(&fs->control, fs->opt.gpu, fs->opt.max_upload_arg) < 0)
		return fail(fs->shown, "cannot set up the control file (is -o max_upload a size?)");
	fs->control_ready = 1;
	if (bufpool_init(&fs->replies, per_cpu(cpus), reply_max) < 0)
		return fail(fs->shown, "out of memory for reply buffers");
	fs->replies_ready = 1;
	fs->mountpoint = cmd->mountpoint;
	fs->debug = cmd->debug;
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = {0};
	struct fs fs = {.opt = {.read_ahead_kb = DEFAULT_READ_AHEAD_KB}, .mountpoint_fd = -1};
	int rc = http_global_init() < 0 ? fail("libcurl", "cannot be initialized") : setup(&fs, &args, &cmd);

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
	free(fs.opt.read_ahead_kb_arg);
	free(fs.opt.uid_arg);
	free(fs.opt.gid_arg);
	free(fs.opt.umask_arg);
	free(fs.opt.max_read_arg);
	free(fs.opt.max_write_arg);
	free(fs.opt.max_readahead_arg);
	free(fs.opt.cacert);
	free(fs.opt.cache_dir);
	free(fs.opt.connect_timeout_arg);
	free(fs.opt.read_timeout_arg);
	free(fs.opt.retries_arg);
	free(fs.opt.block_size_arg);
	free(fs.opt.cache_size_arg);
	free(fs.opt.dequantize);
	free(fs.opt.gptq_format);
	free(fs.opt.ct_packing);
	tree_free(&fs.tree);
	source_close(&fs.src);
	free(fs.conn_opts);
	free(fs.opt.source);
	free(fs.opt.layout_name);
	free(fs.opt.variant);
	if (fs.mountpoint_fd >= 0)
		close(fs.mountpoint_fd);
	free(cmd.mountpoint);
	fuse_opt_free_args(&args);
	return rc < 0 ? 0 : rc;
}
