/*
 * libsoftverbs-preload: softverbsd as the kernel, for an unmodified program
 * linked against rdma-core (LD_PRELOAD; `softverbs exec` sets it up).
 *
 * It translates, and knows no verbs beyond that:
 *  - /dev/infiniband/NAME is <root>/dev/infiniband/NAME, the daemon's device
 *    socket: open() connects to it, the stat family (every spelling of it, one
 *    system call each) answers as for the char device it stands for (S_IFCHR,
 *    st_rdev from the discovery tree's `dev`).
 *  - sysfs: libibverbs reads SYSFS_PATH; when unset it is set to <root>/sys.
 *    A program reading sysfs itself (UCX, hwloc, scripts) sees the RDMA
 *    classes there too: a path under /sys/class/{infiniband,infiniband_verbs,
 *    infiniband_mad,infiniband_cm,misc/rdma_cm} is that path under
 *    SYSFS_PATH for the calls that take a path (open, fopen, opendir,
 *    scandir, the stat family, access, readlink, realpath, the xattr
 *    getters, chdir); realpath answers in /sys terms. The rest of /sys is
 *    the host's.
 *  - NETLINK_RDMA sockets fail with EPROTONOSUPPORT, as on a kernel without
 *    ib_core, so libibverbs looks in sysfs.
 *  - write() of a command is one request frame to the daemon and returns once
 *    answered; the reply is copied to the command's `response` pointer.
 *    Extended commands travel whole in a WRITE_EX frame (their word counts
 *    cannot frame them). GET_CONTEXT goes as GET_CONTEXT_RXE, which tells the
 *    daemon this client speaks rdma-core's rxe provider ABI. librxe's doorbell
 *    (POST_SEND of no WRs) is sent without waiting for an answer, and not at
 *    all while the daemon's requester is running on that send queue (a flag
 *    the daemon keeps in the queue's padding: it looks again before it idles).
 *  - Descriptors: what a kernel command would put in the caller's table is
 *    made real here. GET_CONTEXT's async_fd and CREATE_COMP_CHANNEL's fd name
 *    event streams, connected here and put in place as descriptors (CREATE_CQ
 *    names its channel by descriptor; the daemon knows it by its token). The
 *    daemon gets the process's /proc/self/mem at GET_CONTEXT, and mmap() of a
 *    device file maps the queue memfd it hands out for that offset, both over
 *    its descriptor exchange (<root>/fds.sock, SCM_RIGHTS). So does
 *    syscall(SYS_mmap) of one, where UCX's memory hooks send librxe's mmap().
 *  - Event counts: DESTROY_CQ/QP/SRQ report the events the program has read,
 *    as the kernel's do (counted as they are read), not those the daemon sent.
 *  - ioctl() is ENOTTY (rdma-core then uses write() for every command), read()
 *    EINVAL; close(), or dup2()/dup3() over it, forgets the descriptor; a child
 *    of fork() cannot command its parent's context (EPERM).
 *  - /dev/infiniband/rdma_cm (librdmacm's event channel) is two connections:
 *    the descriptor the program holds is the file's notification stream, on
 *    which the daemon keeps one byte per event waiting (so poll() says
 *    POLLIN exactly when an event waits), and its commands go on a second one
 *    held here. A write() is one request (rdma_user_cm.h framing unchanged:
 *    `in` bytes of struct after the header, the response, at most `out`
 *    bytes, copied to the struct's response pointer); each reply says how many
 *    notification bytes to take off because events left (GET_EVENT, a
 *    destroyed or migrated id). GET_EVENT never waits in the daemon: it is
 *    EAGAIN there, and here it waits for a byte unless the descriptor is
 *    O_NONBLOCK. MIGRATE_ID's `fd` goes as the daemon's token for that file.
 *    No read, ioctl or mmap, as the kernel's file.
 *  - ibv_open_device (libibverbs') is wrapped for one thing that is not a
 *    translation: on a context of our device, ibv_poll_cq and an extended
 *    CQ's ibv_start_poll give the CPU away (sched_yield) once every 16
 *    empty polls in a row, and sleep a microsecond every 1,024th instead,
 *    since the HCA they spin for is a process that may need this core
 *    (see the end).
 * The root is $SOFTVERBS_ROOT, else /run/softverbs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define DEV_DIR "/dev/infiniband"
#define NETLINK_RDMA 20
#define CMD_GET_CONTEXT 0
#define CMD_CREATE_COMP_CHANNEL 17
#define CMD_CREATE_CQ 18
#define CMD_DESTROY_CQ 20
#define CMD_POST_SEND 28
/* ib_uverbs_cmd_hdr + ib_uverbs_post_send (response, qp_handle, wr_count at 20, sge_count, wqe_size) */
#define POST_SEND_LEN 32
#define CMD_CREATE_QP 24
#define CMD_MODIFY_QP 26
#define CMD_DESTROY_QP 27
#define CMD_CREATE_SRQ 32
#define CMD_DESTROY_SRQ 35
#define CMD_CREATE_XSRQ 39
#define CMD_FLAG_EXTENDED 0x80000000u
#define CMD_EX_CREATE_CQ (CMD_FLAG_EXTENDED | CMD_CREATE_CQ)
#define CMD_EX_CREATE_QP (CMD_FLAG_EXTENDED | CMD_CREATE_QP)
#define CMD_EX_MODIFY_QP (CMD_FLAG_EXTENDED | CMD_MODIFY_QP)
/* comp_channel's offset in CREATE_CQ's request and in EX_CREATE_CQ's (after the headers, as written) */
#define CREATE_CQ_CHANNEL_AT 32
#define EX_CREATE_CQ_CHANNEL_AT 40
/* softverbsd's own frames (src/abi/uverbs.ts SvCmd) */
#define SV_ATTACH_ASYNC 0xf0
#define SV_ATTACH_COMP_CHANNEL 0xf1
#define SV_GET_CONTEXT_RXE 0xf3
#define SV_WRITE_EX 0xf4
/* QP handles below this may have their doorbells sent without waiting (the rest always wait) */
#define READY_HANDLES 1024
/* the send queue's idle flag: in rxe_queue_buf's pad_2, 64 bytes past the producer index (abi/rxe-rings.ts RXE_SQ_IDLE_AT) */
#define SQ_IDLE_AT 192
/* ib_uverbs_create_qp_resp and ib_uverbs_ex_create_qp_resp, then rxe_create_qp_resp { rq_mi, sq_mi } (mminfo: u64 offset, u32 size, u32 pad) */
#define CREATE_QP_RESP 32
#define EX_CREATE_QP_RESP 40
#define SQ_MI_AT 16
/* the rdma_cm file (rdma_user_cm.h) */
#define RDMA_CM_NAME "rdma_cm"
#define UCMA_CREATE_ID 0
#define UCMA_GET_EVENT 12
#define UCMA_MIGRATE_ID 18
#define UCMA_SET_OPTION 14
/* rdma_ucm_set_option { optval, id, level, optname, optlen }; the longest value brought to the daemon */
#define SET_OPTION_LEN 24
#define OPTVAL_MAX 4096
/* softverbsd's own frames of the rdma_cm file (src/abi/ucma.ts SvUcmaCmd) */
#define SV_UCMA_NOTIFY_TOKEN 0xf5
#define SV_UCMA_ATTACH_NOTIFY 0xf6
/* descriptors above this are not tracked: opening a device there fails with EMFILE */
#define MAX_FDS 65536

struct cmd_hdr { uint32_t command; uint16_t in_words, out_words; };
struct reply_hdr { int32_t status; uint32_t out_bytes; };
/* rdma_ucm_cmd_hdr: in and out are bytes; the replies of a C program's rdma_cm file (src/abi/ucma.ts SV_UCMA_REPLY) */
struct ucma_hdr { uint32_t cmd; uint16_t in, out; };
struct ucma_reply { int32_t status; uint32_t out_bytes, take, take_old; };
/* the descriptor exchange (<root>/fds.sock; src/abi/uverbs.ts SV_FD_REQ) */
enum { FD_SET_MEM = 1, FD_GET_QUEUE = 2 };
struct fd_req { uint32_t op, token; uint64_t arg; };
struct fd_resp { int32_t status; uint32_t text_len; uint64_t size, offset; uint32_t id, reserved; };
/* no completion channel has this token (the daemon's are below it): an fd that is not a channel's */
#define NO_CHANNEL 0x7fffffff

/*
 * an open device file: its socket path (for the event streams), its device number, one command at a time;
 * for the rdma_cm file, the connection its commands go on and the daemon's token for it
 */
struct dev_fd {
	pthread_mutex_t lock;
	dev_t rdev;
	/* the process that opened it: the daemon's context is that process's (its memory, its events) */
	pid_t owner;
	/*
	 * QP handles whose doorbell was answered with success since the context last modified or destroyed a QP:
	 * their doorbells go without waiting for an answer (a QP's requester is ready or not by the program's own
	 * MODIFY_QPs only, so nothing else can change the answer)
	 */
	uint8_t ready[READY_HANDLES];
	/*
	 * Each QP's send queue header as mapped here (its idle flag, SQ_IDLE_AT: the daemon's, not rxe's): a doorbell
	 * goes only when it swaps the flag from 1 (the daemon's requester idle) to 0; while the requester runs, it
	 * sees what the program posts without one. Known from the CREATE_QP answer's sq_mi (sq_off, sq_wait: the mmap
	 * not made yet) and the mmap() of that offset; forgotten at DESTROY_QP. A QP without it rings every time.
	 */
	uint32_t *sq_idle[READY_HANDLES];
	uint64_t sq_off[READY_HANDLES];
	uint8_t sq_wait[READY_HANDLES];
	int cm_cmd;
	uint32_t cm_token;
	/* the program closed it: a thread still blocked in its GET_EVENT stays blocked, as on the kernel's file */
	int closed;
	char path[];
};

static struct dev_fd *fds[MAX_FDS];
/* a completion channel's descriptor → the daemon's token for it (CREATE_CQ names the channel by descriptor) */
static uint32_t chan_token[MAX_FDS];

/*
 * The events the program has read, per CQ, QP and SRQ. The kernel's DESTROY_CQ/QP/SRQ report the events
 * their caller read (those still queued go with the object), and ibv_destroy_* waits until that many are
 * acked; the daemon can count only the events it sent, some of which may sit unread in a socket (a
 * program that never reads its async fd, as perftest, would wait for ever). So the counts are kept here,
 * where the events are read, and put in the destroy commands' answers.
 */
enum obj_kind { OBJ_CQ, OBJ_QP, OBJ_SRQ };
struct obj_events {
	int dev_fd;
	enum obj_kind kind;
	uint32_t handle;
	uint64_t user_handle;
	uint32_t comp, async;
};
static struct obj_events *objs;
static size_t nobjs, objs_room;
static pthread_mutex_t objs_lock = PTHREAD_MUTEX_INITIALIZER;
/* the async event stream of each context (its records name objects by user_handle) */
static uint8_t async_fd[MAX_FDS];
static char root[4096];
/* what the process takes for /sys (SYSFS_PATH as it was at start) */
static char sysfs[4096];
static int debug;
static pthread_once_t once = PTHREAD_ONCE_INIT;
/*
 * This process's pid, read once and again in the child of every fork(): glibc's getpid() is a system call,
 * and each command asks it (is this the process that opened the file?): for librxe's doorbell, rung after
 * every post, it was half of the program's system calls per operation.
 */
static volatile pid_t self_pid;

static void forked_child(void)
{
	self_pid = (pid_t)syscall(SYS_getpid);
}

static pid_t me(void)
{
	pid_t p = self_pid;
	return p ? p : (self_pid = (pid_t)syscall(SYS_getpid));
}

static void init(void)
{
	/* registered before any fork() of the program's can need it: the constructor runs first */
	pthread_atfork(NULL, NULL, forked_child);
	const char *r = getenv("SOFTVERBS_ROOT");
	snprintf(root, sizeof(root), "%s", r && *r ? r : "/run/softverbs");
	debug = getenv("SOFTVERBS_DEBUG") != NULL;
	if (!getenv("SYSFS_PATH")) {
		char sys[sizeof(root) + 8];
		snprintf(sys, sizeof(sys), "%s/sys", root);
		setenv("SYSFS_PATH", sys, 0);
	}
	snprintf(sysfs, sizeof(sysfs), "%s", getenv("SYSFS_PATH"));
}

/*
 * libc's syscall(), which ours (below) passes calls on to. This library's own system calls go through it
 * too, mmap's included, so it is looked up when loaded, not on a first call that might come from a malloc.
 */
static long (*real_syscall)(long, ...);

static void find_real_syscall(void)
{
	real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
}

__attribute__((constructor)) static void preload_init(void)
{
	find_real_syscall();
	pthread_once(&once, init);
}

/* the next definition of `name` (libc's), looked up once */
#define REAL(ret, name, ...)                                                   \
	static ret (*real_##name)(__VA_ARGS__);                                \
	if (!real_##name)                                                      \
		real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static struct dev_fd *tracked(int fd)
{
	return fd >= 0 && fd < MAX_FDS ? fds[fd] : NULL;
}

/*
 * The sysfs classes of the RDMA stack. The daemon's tree has the first two and misc/rdma_cm; the MAD and
 * (long gone) CM classes are not there, as on a kernel without ib_umad, so a host's own would not describe
 * devices this process cannot see.
 */
static const char *const sys_classes[] = {
	"/sys/class/infiniband", "/sys/class/infiniband_verbs", "/sys/class/infiniband_mad",
	"/sys/class/infiniband_cm", "/sys/class/misc/rdma_cm",
};

/* path is dir or below it, without a `..` that could climb out */
static int under(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return !strncmp(path, dir, n) && (!path[n] || path[n] == '/') && !strstr(path + n, "/..");
}

/*
 * /dev/infiniband[/NAME] → <root>/dev/infiniband[/NAME], /sys/class/C[/…] → <SYSFS_PATH>/class/C[/…] for the
 * classes above, in buf; NULL for any other path (a relative one too)
 */
static const char *map_path(const char *path, char *buf, size_t len)
{
	const char *base = NULL, *sub = "";

	if (!path || path[0] != '/')
		return NULL;
	if (under(path, DEV_DIR)) {
		base = root;
		sub = "/dev";
	}
	for (size_t i = 0; !base && !strncmp(path, "/sys/class/", 11) && i < sizeof(sys_classes) / sizeof(sys_classes[0]); i++)
		if (under(path, sys_classes[i]))
			base = sysfs;
	if (!base)
		return NULL;
	pthread_once(&once, init);
	/* the first component ("/dev" or "/sys") is the base's */
	if ((size_t)snprintf(buf, len, "%s%s%s", base, sub, path + 4) >= len)
		return NULL;
	return buf;
}

/* the device number of device file NAME, from the discovery tree's uverbsN/dev or misc/NAME/dev (0 if none) */
static dev_t rdev_of(const char *mapped)
{
	const char *name = strrchr(mapped, '/') + 1;
	const char *classes[] = { "infiniband_verbs", "misc" };
	char path[sizeof(root) + 300], text[32];
	unsigned int major, minor;

	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) {
		snprintf(path, sizeof(path), "%s/sys/class/%s/%s/dev", root, classes[i], name);
		int fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = syscall(SYS_read, fd, text, sizeof(text) - 1);
		syscall(SYS_close, fd);
		text[n > 0 ? n : 0] = 0;
		if (sscanf(text, "%u:%u", &major, &minor) == 2)
			return makedev(major, minor);
	}
	return 0;
}

/* a socket in place of a char device: what stat() of the device node gives */
static void as_chr(struct stat *st, dev_t rdev)
{
	st->st_mode = S_IFCHR | (st->st_mode & 07777);
	st->st_rdev = rdev;
	st->st_size = 0;
}

/*
 * The device number of a descriptor the preload does not track that is still a connection to a device socket:
 * a dup() of a device file, or one passed by SCM_RIGHTS or inherited. On the kernel any descriptor of the file
 * is the char device, and ibv_import_device() goes by its fstat() (its st_rdev names the device). The socket's
 * peer is the device socket's path; 0 when the descriptor is no such connection. (A dup of an event stream,
 * which the preload does not follow, would pass for the command file: nothing fstat()s one.)
 */
static dev_t peer_rdev(int fd)
{
	/* the event streams (async fd, completion channels) are connections to the same socket: anon inodes on Linux */
	if (fd < 0 || (fd < MAX_FDS && (async_fd[fd] || chan_token[fd])))
		return 0;
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	char dir[sizeof(root) + 32];
	size_t n;

	memset(&a, 0, sizeof(a));
	if (syscall(SYS_getpeername, fd, &a, &len) || a.sun_family != AF_UNIX || len <= offsetof(struct sockaddr_un, sun_path) ||
	    len >= sizeof(a))
		return 0;
	pthread_once(&once, init);
	n = (size_t)snprintf(dir, sizeof(dir), "%s/dev/infiniband/", root);
	if (strncmp(a.sun_path, dir, n) || !a.sun_path[n] || strchr(a.sun_path + n, '/'))
		return 0;
	return rdev_of(a.sun_path);
}

/* stat() or lstat() of a mapped path */
static int stat_mapped(const char *mapped, struct stat *st, int flags)
{
	if (syscall(SYS_newfstatat, AT_FDCWD, mapped, st, flags & AT_SYMLINK_NOFOLLOW))
		return -1;
	if (S_ISSOCK(st->st_mode))
		as_chr(st, rdev_of(mapped));
	return 0;
}

/* a connection to a device socket; ECONNREFUSED (no daemon behind the file) is ENXIO, as a node without its driver */
static int connect_dev(const char *path, int cloexec)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(a.sun_path))
		return errno = ENAMETOOLONG, -1;
	strcpy(a.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | (cloexec ? SOCK_CLOEXEC : 0), 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		int e = errno == ECONNREFUSED ? ENXIO : errno;
		syscall(SYS_close, fd);
		return errno = e, -1;
	}
	return fd;
}

static int recv_all(int fd, void *buf, size_t len);
static int skip(int fd, size_t len, char *keep, size_t keep_len);
static int xfer(int fd, struct iovec *iov, int n, int receiving);

/*
 * The rdma_cm file: a command connection (the daemon's token for the file comes back on it) and the notification
 * stream attached to it by the token, which is the descriptor returned. -1 with errno if either fails.
 */
static int cm_open(const char *mapped, int cloexec, int *cmd, uint32_t *token)
{
	struct { struct ucma_hdr h; uint32_t token, reserved; } f = { { SV_UCMA_NOTIFY_TOKEN, 8, 8 }, 0, 0 };
	struct iovec v = { &f, sizeof(f) };
	struct ucma_reply r;
	struct reply_hdr a;
	int c, n = -1, e;

	if ((c = connect_dev(mapped, cloexec)) < 0)
		return -1;
	if (xfer(c, &v, 1, 0) || recv_all(c, &r, sizeof(r)))
		goto io;
	if (r.status || r.out_bytes < 4) {
		errno = r.status ? -r.status : EIO;
		goto fail;
	}
	if (recv_all(c, &f.token, 4) || skip(c, r.out_bytes - 4, NULL, 0) || (n = connect_dev(mapped, cloexec)) < 0)
		goto io;
	f.h = (struct ucma_hdr){ SV_UCMA_ATTACH_NOTIFY, 8, 0 };
	v = (struct iovec){ &f, sizeof(f) };
	if (xfer(n, &v, 1, 0) || recv_all(n, &a, sizeof(a)) || skip(n, a.out_bytes, NULL, 0))
		goto io;
	if (a.status) {
		errno = -a.status;
		goto fail;
	}
	*cmd = c;
	*token = f.token;
	return n;
io:
	errno = errno == ENXIO ? ENXIO : EIO;
fail:
	e = errno;
	syscall(SYS_close, c);
	if (n >= 0)
		syscall(SYS_close, n);
	return errno = e, -1;
}

static int open_mapped(const char *mapped, int flags, mode_t mode)
{
	struct stat st;
	struct dev_fd *d;
	int fd, cmd = -1;
	uint32_t token = 0;

	if (syscall(SYS_newfstatat, AT_FDCWD, mapped, &st, 0))
		return -1;
	if (!S_ISSOCK(st.st_mode)) /* the directory itself */
		return syscall(SYS_openat, AT_FDCWD, mapped, flags, mode);
	if (!strcmp(strrchr(mapped, '/') + 1, RDMA_CM_NAME))
		fd = cm_open(mapped, flags & O_CLOEXEC, &cmd, &token);
	else
		fd = connect_dev(mapped, flags & O_CLOEXEC);
	if (fd < 0)
		return -1;
	d = fd < MAX_FDS ? calloc(1, sizeof(*d) + strlen(mapped) + 1) : NULL;
	if (!d) {
		syscall(SYS_close, fd);
		if (cmd >= 0)
			syscall(SYS_close, cmd);
		return errno = fd < MAX_FDS ? ENOMEM : EMFILE, -1;
	}
	pthread_mutex_init(&d->lock, NULL);
	d->rdev = rdev_of(mapped);
	d->owner = me();
	d->cm_cmd = cmd;
	d->cm_token = token;
	strcpy(d->path, mapped);
	if (flags & O_NONBLOCK)
		fcntl(fd, F_SETFL, O_NONBLOCK);
	fds[fd] = d;
	return fd;
}

/* the whole of a send or a receive, across signals and a non-blocking descriptor; 0, or -1 with errno */
static int xfer(int fd, struct iovec *iov, int n, int receiving)
{
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = n };

	for (;;) {
		while (m.msg_iovlen && !m.msg_iov->iov_len) {
			m.msg_iov++;
			m.msg_iovlen--;
		}
		if (!m.msg_iovlen)
			return 0;
		ssize_t r = receiving ? recvmsg(fd, &m, 0) : sendmsg(fd, &m, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = receiving ? POLLIN : POLLOUT };
			poll(&p, 1, -1);
			continue;
		}
		if (r <= 0)
			return errno = r == 0 ? ECONNRESET : errno, -1;
		while (r > 0) {
			size_t k = (size_t)r < m.msg_iov->iov_len ? (size_t)r : m.msg_iov->iov_len;
			m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + k;
			m.msg_iov->iov_len -= k;
			r -= k;
			if (!m.msg_iov->iov_len) {
				m.msg_iov++;
				m.msg_iovlen--;
			}
		}
	}
}

static int recv_all(int fd, void *buf, size_t len)
{
	struct iovec v = { buf, len };
	return xfer(fd, &v, 1, 1);
}

/* receives and drops len bytes */
static int skip(int fd, size_t len, char *keep, size_t keep_len)
{
	char scratch[1024];

	while (len) {
		size_t n = len < sizeof(scratch) ? len : sizeof(scratch);
		if (recv_all(fd, scratch, n))
			return -1;
		if (keep && keep_len > 1) {
			size_t k = n < keep_len - 1 ? n : keep_len - 1;
			memcpy(keep, scratch, k);
			keep[k] = 0;
			keep = NULL;
		}
		len -= n;
	}
	return 0;
}

/* the event stream the daemon's token names, as a descriptor of ours (or -1 with errno) */
static int attach(const char *path, uint32_t command, uint32_t token)
{
	struct { struct cmd_hdr h; uint32_t token, reserved; } f = { { command, sizeof(f) / 4, 0 }, token, 0 };
	struct iovec v = { &f, sizeof(f) };
	struct reply_hdr r;
	int fd = connect_dev(path, 1);

	if (fd < 0)
		return -1;
	if (xfer(fd, &v, 1, 0) || recv_all(fd, &r, sizeof(r)) || skip(fd, r.out_bytes, NULL, 0) || (r.status && (errno = -r.status))) {
		int e = errno;
		syscall(SYS_close, fd);
		return errno = e, -1;
	}
	return fd;
}

/*
 * One request to the daemon's descriptor exchange (<root>/fds.sock): the `ngive` descriptors of `give` (at
 * most two) ride with it, the reply and its descriptor (-1 if none) come back. 0, or -1 with errno.
 */
static int exchange(uint32_t op, uint32_t token, uint64_t arg, const int *give, int ngive, struct fd_resp *reply, int *got)
{
	char path[sizeof(root) + 16];
	struct fd_req q = { op, token, arg };
	struct fd_resp r;
	char text[512];
	union { struct cmsghdr h; char b[CMSG_SPACE(2 * sizeof(int))]; } out;
	union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } in;
	struct iovec v = { &q, sizeof(q) }, rv = { &r, sizeof(r) };
	struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1 };
	int s, e;

	*got = -1;
	pthread_once(&once, init);
	snprintf(path, sizeof(path), "%s/fds.sock", root);
	if ((s = connect_dev(path, 1)) < 0)
		return -1;
	if (ngive > 0) {
		memset(&out, 0, sizeof(out));
		m.msg_control = out.b;
		m.msg_controllen = CMSG_SPACE(ngive * sizeof(int));
		out.h.cmsg_level = SOL_SOCKET;
		out.h.cmsg_type = SCM_RIGHTS;
		out.h.cmsg_len = CMSG_LEN(ngive * sizeof(int));
		memcpy(CMSG_DATA(&out.h), give, ngive * sizeof(int));
	}
	ssize_t sent = sendmsg(s, &m, MSG_NOSIGNAL);
	if (sent != sizeof(q)) {
		if (sent >= 0)
			errno = EIO;
		goto fail;
	}
	m = (struct msghdr){ .msg_iov = &rv, .msg_iovlen = 1, .msg_control = in.b, .msg_controllen = sizeof(in.b) };
	ssize_t n;
	while ((n = recvmsg(s, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n <= 0) {
		if (n == 0)
			errno = ECONNRESET; /* the daemon closed it unanswered */
		goto fail;
	}
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
		memcpy(got, CMSG_DATA(c), sizeof(int));
	if ((size_t)n < sizeof(r) && recv_all(s, (char *)&r + n, sizeof(r) - n))
		goto fail;
	if (r.status) {
		skip(s, r.text_len, text, sizeof(text));
		if (debug)
			fprintf(stderr, "softverbs: descriptor exchange op %u: %s: %s\n", op, strerror(-r.status), text);
		syscall(SYS_close, s);
		if (*got >= 0)
			syscall(SYS_close, *got);
		*got = -1;
		return errno = -r.status, -1;
	}
	syscall(SYS_close, s);
	*reply = r;
	return 0;
fail:
	e = errno;
	syscall(SYS_close, s);
	if (*got >= 0)
		syscall(SYS_close, *got);
	*got = -1;
	return errno = e, -1;
}

/*
 * GET_CONTEXT answered: the daemon gets our memory (/proc/self/mem) and its map (/proc/self/maps, which it
 * checks a registration against), then the async event stream becomes ours
 */
static int context_made(struct dev_fd *d, void *resp)
{
	/* ib_uverbs_get_context_resp.async_fd: the daemon's token for the context */
	uint32_t token;
	struct fd_resp unused;
	int got, afd;

	memcpy(&token, resp, 4);
	int give[2];
	give[0] = syscall(SYS_openat, AT_FDCWD, "/proc/self/mem", O_RDWR | O_CLOEXEC);
	if (give[0] < 0)
		return -1;
	give[1] = syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (give[1] < 0) {
		int e = errno;
		syscall(SYS_close, give[0]);
		return errno = e, -1;
	}
	int r = exchange(FD_SET_MEM, token, 0, give, 2, &unused, &got);
	int e = errno;
	syscall(SYS_close, give[0]);
	syscall(SYS_close, give[1]);
	if (r)
		return errno = e, -1;
	if ((afd = attach(d->path, SV_ATTACH_ASYNC, token)) < 0)
		return -1;
	if (afd < MAX_FDS)
		async_fd[afd] = 1;
	memcpy(resp, &afd, 4);
	return 0;
}

/* CREATE_COMP_CHANNEL answered: its event stream as a descriptor of ours, remembered for CREATE_CQ */
static int channel_made(struct dev_fd *d, void *resp)
{
	uint32_t token;
	int cfd;

	memcpy(&token, resp, 4);
	if ((cfd = attach(d->path, SV_ATTACH_COMP_CHANNEL, token)) < 0)
		return -1;
	if (cfd >= MAX_FDS) {
		syscall(SYS_close, cfd);
		return errno = EMFILE, -1;
	}
	chan_token[cfd] = token;
	memcpy(resp, &cfd, 4);
	return 0;
}

/* an object made: its events are counted from now on */
static void obj_made(int dev_fd, enum obj_kind kind, uint32_t handle, uint64_t user_handle)
{
	pthread_mutex_lock(&objs_lock);
	if (nobjs == objs_room) {
		size_t room = objs_room ? objs_room * 2 : 16;
		struct obj_events *n = realloc(objs, room * sizeof(*n));
		if (!n)
			goto out; /* uncounted: its destroy keeps the daemon's counts */
		objs = n;
		objs_room = room;
	}
	objs[nobjs++] = (struct obj_events){ dev_fd, kind, handle, user_handle, 0, 0 };
out:
	pthread_mutex_unlock(&objs_lock);
}

/* its destroy answered: the events its program read replace the daemon's counts of those sent (comp: a CQ's) */
static void obj_destroyed(int dev_fd, enum obj_kind kind, uint32_t handle, uint32_t *comp, uint32_t *async)
{
	pthread_mutex_lock(&objs_lock);
	for (size_t i = 0; i < nobjs; i++) {
		if (objs[i].dev_fd != dev_fd || objs[i].kind != kind || objs[i].handle != handle)
			continue;
		if (comp)
			*comp = objs[i].comp;
		*async = objs[i].async;
		objs[i] = objs[--nobjs];
		break;
	}
	pthread_mutex_unlock(&objs_lock);
}

/*
 * n bytes of event records were read: ib_uverbs_comp_event_desc (the CQ's user_handle, 8 bytes) from a
 * completion channel, ib_uverbs_async_event_desc (element, the object's user_handle; type; 16 bytes) from
 * an async fd
 */
static void events_read(const uint8_t *b, size_t n, int async)
{
	size_t size = async ? 16 : 8;

	pthread_mutex_lock(&objs_lock);
	for (size_t at = 0; at + size <= n; at += size) {
		uint64_t uh;
		memcpy(&uh, b + at, 8);
		for (size_t i = 0; i < nobjs; i++)
			if (objs[i].user_handle == uh && (async || objs[i].kind == OBJ_CQ)) {
				if (async)
					objs[i].async++;
				else
					objs[i].comp++;
				break;
			}
	}
	pthread_mutex_unlock(&objs_lock);
}

/* what a command made or destroyed, for the event counts: the answered command, its request, its response */
static void count_objects(int fd, uint32_t command, const uint8_t *b, size_t len, uint8_t *resp, size_t room)
{
	enum obj_kind kind;
	size_t uh_at; /* where the request's user_handle is */
	uint32_t handle, comp, async;
	uint64_t uh;

	switch (command) {
	case CMD_CREATE_CQ: kind = OBJ_CQ; uh_at = 16; goto made;
	case CMD_EX_CREATE_CQ: kind = OBJ_CQ; uh_at = 24; goto made;
	case CMD_CREATE_QP: kind = OBJ_QP; uh_at = 16; goto made;
	case CMD_EX_CREATE_QP: kind = OBJ_QP; uh_at = 24; goto made;
	case CMD_CREATE_SRQ: kind = OBJ_SRQ; uh_at = 16; goto made;
	case CMD_CREATE_XSRQ: kind = OBJ_SRQ; uh_at = 16; goto made;
	case CMD_DESTROY_CQ: kind = OBJ_CQ; goto destroyed;
	case CMD_DESTROY_QP: kind = OBJ_QP; goto destroyed;
	case CMD_DESTROY_SRQ: kind = OBJ_SRQ; goto destroyed;
	default: return;
	}
made:
	/* every create answer starts with the new object's handle */
	if (len < uh_at + 8 || room < 4)
		return;
	memcpy(&handle, resp, 4);
	memcpy(&uh, b + uh_at, 8);
	obj_made(fd, kind, handle, uh);
	return;
destroyed:
	/* ib_uverbs_destroy_{cq,qp,srq}: the handle after the response pointer; the answer's counts: a CQ's comp then async, the others' async */
	if (len < 20 || room < (kind == OBJ_CQ ? 8u : 4u))
		return;
	memcpy(&handle, b + 16, 4);
	if (kind == OBJ_CQ) {
		memcpy(&comp, resp, 4);
		memcpy(&async, resp + 4, 4);
		obj_destroyed(fd, kind, handle, &comp, &async);
		memcpy(resp, &comp, 4);
		memcpy(resp + 4, &async, 4);
	} else {
		memcpy(&async, resp, 4);
		obj_destroyed(fd, kind, handle, NULL, &async);
		memcpy(resp, &async, 4);
	}
}

/* A QP made: where its send queue will be mapped (its sq_mi offset). A QP destroyed: its queue is about to go. */
static void sq_known(struct dev_fd *d, uint32_t command, const uint8_t *b, size_t len, const uint8_t *resp, size_t n)
{
	uint32_t handle;
	size_t core = command == CMD_CREATE_QP ? CREATE_QP_RESP : EX_CREATE_QP_RESP;

	if (command == CMD_CREATE_QP || command == CMD_EX_CREATE_QP) {
		if (n < core + SQ_MI_AT + 8)
			return;
		memcpy(&handle, resp, 4);
		if (handle >= READY_HANDLES)
			return;
		__atomic_store_n(&d->sq_idle[handle], NULL, __ATOMIC_RELEASE);
		memcpy(&d->sq_off[handle], resp + core + SQ_MI_AT, 8);
		d->sq_wait[handle] = 1;
	} else if (command == CMD_DESTROY_QP && len >= 20) {
		memcpy(&handle, b + 16, 4);
		if (handle < READY_HANDLES) {
			__atomic_store_n(&d->sq_idle[handle], NULL, __ATOMIC_RELEASE);
			d->sq_wait[handle] = 0;
		}
	}
}

/* A queue mapped at `p` from offset `off`: if it is a QP's send queue, its idle flag is there. */
static void sq_mapped(struct dev_fd *d, uint64_t off, void *p, size_t len)
{
	if (len < SQ_IDLE_AT + 4)
		return;
	for (int h = 0; h < READY_HANDLES; h++)
		if (d->sq_wait[h] && d->sq_off[h] == off) {
			d->sq_wait[h] = 0;
			__atomic_store_n(&d->sq_idle[h], (uint32_t *)((uint8_t *)p + SQ_IDLE_AT), __ATOMIC_RELEASE);
			return;
		}
}

/*
 * POST_SEND with wr_count 0: librxe's doorbell after it has written WQEs into the send queue. The kernel's
 * write() returns once the requester is scheduled, with bad_wr 0, or EINVAL for a QP whose requester is
 * not ready (not moved to RTS since its reset). Once a QP's doorbell has been answered with success, and
 * until the program next modifies or destroys a QP, the answer cannot change: its doorbells then go with no
 * room for an answer (out_words 0), so the daemon answers nothing and the program does not wait for it.
 */
static ssize_t doorbell(struct dev_fd *d, int fd, struct cmd_hdr *env, const uint8_t *b, size_t len, uint64_t response, size_t room)
{
	struct iovec out[2] = { { env, sizeof(*env) }, { (void *)(b + sizeof(*env)), len - sizeof(*env) } };

	env->out_words = 0;
	pthread_mutex_lock(&d->lock);
	int bad = xfer(fd, out, 2, 0);
	pthread_mutex_unlock(&d->lock);
	if (bad)
		return errno = EIO, -1;
	if (room >= 4)
		memset((void *)(uintptr_t)response, 0, 4); /* ib_uverbs_post_send_resp.bad_wr */
	return len;
}

/*
 * One command: its frame out, its reply in, the response copied to where the command says. The daemon
 * answers every frame in order, so the descriptor's lock keeps each reply with its request.
 */
static ssize_t command(struct dev_fd *d, int fd, const void *buf, size_t len)
{
	const uint8_t *b = buf;
	struct cmd_hdr h, env;
	struct reply_hdr r;
	struct iovec out[2];
	int nout = 0;
	uint64_t response = 0;
	size_t room = 0, channel_at = 0;
	char why[256] = "";
	uint8_t copy[256];
	uint32_t qp = READY_HANDLES;

	if (len < sizeof(h))
		return errno = EINVAL, -1;
	/*
	 * A child of fork() inherits the descriptor, but the context stays its parent's: the daemon reaches the
	 * parent's memory and events. The child may keep or close its copy (the parent's goes on); it may not
	 * command the parent's context.
	 */
	if (d->owner != me()) {
		if (debug)
			fprintf(stderr, "softverbs: a device file opened by pid %d is not usable in its child %d: open the device again\n", d->owner, getpid());
		return errno = EPERM, -1;
	}
	memcpy(&h, b, sizeof(h));
	/* CREATE_CQ names its channel by our descriptor; the daemon knows it by its token */
	if (h.command == CMD_CREATE_CQ)
		channel_at = CREATE_CQ_CHANNEL_AT;
	else if (h.command == CMD_EX_CREATE_CQ)
		channel_at = EX_CREATE_CQ_CHANNEL_AT;
	if (channel_at && len >= channel_at + 4 && len <= sizeof(copy)) {
		int32_t ch;
		memcpy(copy, b, len);
		memcpy(&ch, copy + channel_at, 4);
		if (ch >= 0) {
			uint32_t t = ch < MAX_FDS && chan_token[ch] ? chan_token[ch] : NO_CHANNEL;
			memcpy(copy + channel_at, &t, 4);
		}
		b = copy;
	}
	if (h.command & CMD_FLAG_EXTENDED) {
		uint16_t provider_out;
		/* ex_hdr: response at 8, provider_in_words at 16, provider_out_words at 18 */
		if (len < 24 || len % 4 || len + sizeof(env) > 0xffffu * 4)
			return errno = EINVAL, -1;
		memcpy(&response, b + 8, 8);
		memcpy(&provider_out, b + 18, 2);
		room = ((size_t)h.out_words + provider_out) * 8;
		env = (struct cmd_hdr){ SV_WRITE_EX, (len + sizeof(env)) / 4, 0 };
		out[nout++] = (struct iovec){ &env, sizeof(env) };
		out[nout++] = (struct iovec){ (void *)b, len };
	} else {
		if (len != (size_t)h.in_words * 4)
			return errno = EINVAL, -1;
		/* a legacy command with a response names it in its first field */
		if (h.out_words && len >= 16) {
			memcpy(&response, b + 8, 8);
			room = (size_t)h.out_words * 4;
		}
		env = h;
		if (h.command == CMD_GET_CONTEXT)
			env.command = SV_GET_CONTEXT_RXE;
		out[nout++] = (struct iovec){ &env, sizeof(env) };
		out[nout++] = (struct iovec){ (void *)(b + sizeof(h)), len - sizeof(h) };
	}
	if (!response)
		room = 0;
	if (h.command == CMD_POST_SEND && len == POST_SEND_LEN && !memcmp(b + 20, "\0\0\0\0", 4)) {
		memcpy(&qp, b + 16, 4);
		if (qp < READY_HANDLES && d->ready[qp]) {
			uint32_t *idle = __atomic_load_n(&d->sq_idle[qp], __ATOMIC_ACQUIRE), one = 1;
			/* the daemon's requester is running (flag 0): it looks at the producer index again before it idles */
			if (idle && !__atomic_compare_exchange_n(idle, &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
				if (room >= 4)
					memset((void *)(uintptr_t)response, 0, 4); /* ib_uverbs_post_send_resp.bad_wr */
				return len;
			}
			return doorbell(d, fd, &env, b, len, response, room);
		}
		/* one that waits asks for the answer, whatever room the program gave (the daemon answers a doorbell only then) */
		if (!env.out_words)
			env.out_words = 1;
	}
	if (h.command == CMD_MODIFY_QP || h.command == CMD_EX_MODIFY_QP || h.command == CMD_DESTROY_QP)
		memset(d->ready, 0, sizeof(d->ready));

	pthread_mutex_lock(&d->lock);
	int bad = xfer(fd, out, nout, 0) || recv_all(fd, &r, sizeof(r));
	if (!bad && r.status == 0) {
		size_t n = r.out_bytes < room ? r.out_bytes : room;
		bad = recv_all(fd, (void *)(uintptr_t)response, n) || skip(fd, r.out_bytes - n, NULL, 0);
	} else if (!bad) {
		bad = skip(fd, r.out_bytes, why, sizeof(why));
	}
	pthread_mutex_unlock(&d->lock);
	if (bad) /* the daemon is gone: what the kernel says of a device that went away */
		return errno = EIO, -1;
	if (r.status) {
		if (debug)
			fprintf(stderr, "softverbs: command 0x%x: %s%s%s\n", h.command, strerror(-r.status), *why ? ": " : "", why);
		return errno = -r.status, -1;
	}
	if (h.command == CMD_GET_CONTEXT && room >= 4 && context_made(d, (void *)(uintptr_t)response))
		return -1;
	if (h.command == CMD_CREATE_COMP_CHANNEL && room >= 4 && channel_made(d, (void *)(uintptr_t)response))
		return -1;
	count_objects(fd, h.command, b, len, (uint8_t *)(uintptr_t)response, r.out_bytes < room ? r.out_bytes : room);
	sq_known(d, h.command, b, len, (uint8_t *)(uintptr_t)response, r.out_bytes < room ? r.out_bytes : room);
	if (qp < READY_HANDLES)
		d->ready[qp] = 1;
	return len;
}

/*
 * One rdma_cm request on the file's command connection: the reply's response copied to `response` (at most `room`
 * bytes), then the notification bytes of the events that left taken off this descriptor's stream and off that of
 * `old` (MIGRATE_ID's), so each holds one byte per event waiting. 0, or -1 with errno.
 */
static int cm_request(struct dev_fd *d, int fd, uint32_t cmd, struct iovec *out, int nout, uint64_t response, size_t room, int old)
{
	struct ucma_reply r;
	char why[256] = "";

	pthread_mutex_lock(&d->lock);
	if (__atomic_load_n(&d->closed, __ATOMIC_ACQUIRE)) {
		/* another thread closed the file meanwhile: a GET_EVENT waits for ever, as in the kernel's file; the rest EBADF */
		pthread_mutex_unlock(&d->lock);
		if (cmd == UCMA_GET_EVENT)
			for (;;)
				pause();
		return errno = EBADF, -1;
	}
	int bad = xfer(d->cm_cmd, out, nout, 0) || recv_all(d->cm_cmd, &r, sizeof(r));
	if (!bad && r.status == 0) {
		size_t n = response ? (r.out_bytes < room ? r.out_bytes : room) : 0;
		bad = recv_all(d->cm_cmd, (void *)(uintptr_t)response, n) || skip(d->cm_cmd, r.out_bytes - n, NULL, 0);
	} else if (!bad) {
		bad = skip(d->cm_cmd, r.out_bytes, why, sizeof(why));
	}
	if (!bad && r.take)
		bad = skip(fd, r.take, NULL, 0);
	if (!bad && r.take_old && old >= 0)
		bad = skip(old, r.take_old, NULL, 0);
	pthread_mutex_unlock(&d->lock);
	if (bad) { /* the daemon is gone */
		if (debug)
			fprintf(stderr, "softverbs: rdma_cm command %u: the connection to the daemon failed (%s)\n", cmd, strerror(errno));
		return errno = EIO, -1;
	}
	if (r.status) {
		if (debug && !(cmd == UCMA_GET_EVENT && r.status == -EAGAIN))
			fprintf(stderr, "softverbs: rdma_cm command %u: %s%s%s\n", cmd, strerror(-r.status), *why ? ": " : "", why);
		return errno = -r.status, -1;
	}
	return 0;
}

/* write() of the rdma_cm file: the command as written (MIGRATE_ID's fd as a token), its answer where it says */
static ssize_t cm_command(struct dev_fd *d, int fd, const void *buf, size_t len)
{
	const uint8_t *body = (const uint8_t *)buf + sizeof(struct ucma_hdr);
	struct ucma_hdr h;
	uint8_t first[16];
	struct iovec out[3];
	uint64_t response = 0;
	int old = -1;

	if (len < sizeof(h))
		return errno = EINVAL, -1;
	/* as for a device file: the parent's ids are not its child's to command (the two would share one connection) */
	if (d->owner != me())
		return errno = EPERM, -1;
	memcpy(&h, buf, sizeof(h));
	if (sizeof(h) + h.in > len)
		return errno = EINVAL, -1;
	/* the response pointer: the first u64 of a command that answers, but CREATE_ID's second (after its uid) */
	size_t at = h.cmd == UCMA_CREATE_ID ? 8 : 0;
	if (h.out && h.in >= at + 8)
		memcpy(&response, body + at, 8);
	out[0] = (struct iovec){ &h, sizeof(h) };
	out[1] = (struct iovec){ (void *)body, h.in };
	out[2] = (struct iovec){ NULL, 0 };
	if (h.cmd == UCMA_MIGRATE_ID && h.in >= sizeof(first)) {
		/* rdma_ucm_migrate_id { response, id, fd }: the daemon knows the file fd is by its token (0: not an rdma_cm file) */
		struct dev_fd *o;
		uint32_t token;
		memcpy(first, body, sizeof(first));
		memcpy(&old, first + 12, 4);
		o = tracked(old);
		token = o && o->cm_cmd >= 0 ? o->cm_token : 0;
		if (!token)
			old = -1;
		memcpy(first + 12, &token, 4);
		out[1] = (struct iovec){ first, sizeof(first) };
		out[2] = (struct iovec){ (void *)(body + sizeof(first)), h.in - sizeof(first) };
	}
	uint8_t optval[OPTVAL_MAX];
	if (h.cmd == UCMA_SET_OPTION && h.in >= SET_OPTION_LEN) {
		/*
		 * the value is in this process's memory, which the daemon does not read: its optlen bytes go after the
		 * struct. Read with process_vm_readv, so a bad pointer is EFAULT as the kernel's copy would say.
		 */
		uint64_t p;
		uint32_t n;
		memcpy(&p, body, 8);
		memcpy(&n, body + 20, 4);
		if (n > sizeof(optval))
			return errno = EINVAL, -1;
		struct iovec local = { optval, n }, remote = { (void *)(uintptr_t)p, n };
		if (n && syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0) != (ssize_t)n)
			return errno = EFAULT, -1;
		h.in = SET_OPTION_LEN + n;
		out[1] = (struct iovec){ (void *)body, SET_OPTION_LEN };
		out[2] = (struct iovec){ optval, n };
	}
	for (;;) {
		struct iovec v[3] = { out[0], out[1], out[2] };
		if (!cm_request(d, fd, h.cmd, v, 3, response, h.out, old))
			return len;
		if (h.cmd != UCMA_GET_EVENT || errno != EAGAIN || (fcntl(fd, F_GETFL) & O_NONBLOCK))
			return -1;
		/* a blocking GET_EVENT: until a notification byte says an event waits (a signal restarts the wait) */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, -1);
		if (__atomic_load_n(&d->closed, __ATOMIC_ACQUIRE))
			for (;;)
				pause();
		if (r < 0 && errno != EINTR)
			return -1;
		if ((p.revents & (POLLHUP | POLLERR | POLLNVAL)) && !(p.revents & POLLIN)) {
			if (debug)
				fprintf(stderr, "softverbs: rdma_cm GET_EVENT: the event stream ended (revents 0x%x)\n", p.revents);
			return errno = EIO, -1;
		}
	}
}

/* ---- the interposed calls ---- */

static mode_t open_mode(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

/*
 * open, open64, openat and openat64: a device path is opened here, any other by libc's own `name`. After the
 * name come ARGS, the arguments libc's call is passed, and the parameters before `flags` (the at-forms' dirfd,
 * then the path).
 */
/*
 * Linux has gid_attrs/types/I and ndevs/I for every entry of the GID table, and reading one of an empty
 * entry fails with EINVAL (libibverbs' sysfs fallback of ibv_query_gid_ex/ibv_query_gid_table takes that
 * as "no GID here"). The daemon's tree has those files for the GIDs there are; an absent one of ours is
 * opened here as a descriptor the kernel itself refuses to read() with EINVAL (an epoll instance's), so a
 * read through stdio (fopen's, which no interposed read() sees) fails as sysfs's would too.
 */
static int empty_gid_attr(const char *path, int fd, int cloexec)
{
	size_t n;

	pthread_once(&once, init);
	n = strlen(sysfs);
	if (fd >= 0 || errno != ENOENT || !path || !n || strncmp(path, sysfs, n) || strncmp(path + n, "/class/infiniband/", 18) ||
	    (!strstr(path + n, "/gid_attrs/types/") && !strstr(path + n, "/gid_attrs/ndevs/")))
		return fd;
	int e = epoll_create1(cloexec ? EPOLL_CLOEXEC : 0);
	return e < 0 ? (errno = ENOENT, -1) : e;
}

#define OPEN(name, ARGS, ...)                                                  \
	EXPORT int name(__VA_ARGS__, int flags, ...)                           \
	{                                                                      \
		char buf[4096];                                                \
		const char *m = map_path(path, buf, sizeof(buf));              \
		va_list ap;                                                    \
		va_start(ap, flags);                                           \
		mode_t mode = open_mode(flags, ap);                            \
		va_end(ap);                                                    \
		if (m)                                                         \
			return empty_gid_attr(m, open_mapped(m, flags, mode),  \
					      flags & O_CLOEXEC);              \
		REAL(int, name, __VA_ARGS__, int, ...);                        \
		return empty_gid_attr(path, real_##name ARGS, flags & O_CLOEXEC); \
	}
OPEN(open, (path, flags, mode), const char *path)
OPEN(open64, (path, flags, mode), const char *path)
OPEN(openat, (dirfd, path, flags, mode), int dirfd, const char *path)
OPEN(openat64, (dirfd, path, flags, mode), int dirfd, const char *path)

/* the fortified entry points (_FORTIFY_SOURCE) */
#define OPEN_2(name)                                                           \
	EXPORT int name(const char *path, int flags)                           \
	{                                                                      \
		char buf[4096];                                                \
		const char *m = map_path(path, buf, sizeof(buf));              \
		if (m)                                                         \
			return empty_gid_attr(m, open_mapped(m, flags, 0),     \
					      flags & O_CLOEXEC);              \
		REAL(int, name, const char *, int);                            \
		return empty_gid_attr(path, real_##name(path, flags), flags & O_CLOEXEC); \
	}
OPEN_2(__open_2)
OPEN_2(__open64_2)

/*
 * The stat family, every spelling of it (glibc >= 2.33 exports stat, fstat, ...; older binaries call
 * __xstat(ver, ...)): one system call, with a device file's answer made a char device's. On the 64-bit
 * targets struct stat is the kernel's, whatever the spelling or version.
 */
_Static_assert(sizeof(long) == 8, "the stat family below is the 64-bit kernel's");

static int do_stat(int dirfd, const char *path, struct stat *st, int flags)
{
	char buf[4096];
	const char *m = map_path(path, buf, sizeof(buf));
	struct dev_fd *d;

	if (m)
		return stat_mapped(m, st, flags);
	if (syscall(SYS_newfstatat, dirfd, path, st, flags))
		return -1;
	if (path && !*path && (flags & AT_EMPTY_PATH)) {
		dev_t rdev;
		if ((d = tracked(dirfd)))
			as_chr(st, d->rdev);
		else if (S_ISSOCK(st->st_mode) && (rdev = peer_rdev(dirfd)))
			as_chr(st, rdev);
	}
	return 0;
}

EXPORT int stat(const char *p, struct stat *st) { return do_stat(AT_FDCWD, p, st, 0); }
EXPORT int lstat(const char *p, struct stat *st) { return do_stat(AT_FDCWD, p, st, AT_SYMLINK_NOFOLLOW); }
EXPORT int fstat(int fd, struct stat *st) { return do_stat(fd, "", st, AT_EMPTY_PATH); }
EXPORT int fstatat(int dirfd, const char *p, struct stat *st, int flags) { return do_stat(dirfd, p, st, flags); }
EXPORT int stat64(const char *p, struct stat64 *st) { return stat(p, (struct stat *)st); }
EXPORT int lstat64(const char *p, struct stat64 *st) { return lstat(p, (struct stat *)st); }
EXPORT int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }
EXPORT int fstatat64(int dirfd, const char *p, struct stat64 *st, int flags) { return fstatat(dirfd, p, (struct stat *)st, flags); }
EXPORT int __xstat(int ver, const char *p, struct stat *st) { (void)ver; return stat(p, st); }
EXPORT int __lxstat(int ver, const char *p, struct stat *st) { (void)ver; return lstat(p, st); }
EXPORT int __fxstat(int ver, int fd, struct stat *st) { (void)ver; return fstat(fd, st); }
EXPORT int __fxstatat(int ver, int dirfd, const char *p, struct stat *st, int flags) { (void)ver; return fstatat(dirfd, p, st, flags); }
EXPORT int __xstat64(int ver, const char *p, struct stat64 *st) { (void)ver; return stat(p, (struct stat *)st); }
EXPORT int __lxstat64(int ver, const char *p, struct stat64 *st) { (void)ver; return lstat(p, (struct stat *)st); }
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) { (void)ver; return fstat(fd, (struct stat *)st); }
EXPORT int __fxstatat64(int ver, int dirfd, const char *p, struct stat64 *st, int flags) { (void)ver; return fstatat(dirfd, p, (struct stat *)st, flags); }

/* statx (coreutils' stat and ls use it) */
EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	char buf[4096];
	const char *m = map_path(path, buf, sizeof(buf));
	struct dev_fd *d = !*path && (flags & AT_EMPTY_PATH) ? tracked(dirfd) : NULL;
	dev_t rdev;

	if (syscall(SYS_statx, m ? AT_FDCWD : dirfd, m ? m : path, flags, mask, stx))
		return -1;
	if (m && S_ISSOCK(stx->stx_mode))
		rdev = rdev_of(m);
	else if (d)
		rdev = d->rdev;
	else if (!*path && (flags & AT_EMPTY_PATH) && S_ISSOCK(stx->stx_mode) && (rdev = peer_rdev(dirfd)))
		;
	else
		return 0;
	stx->stx_mode = S_IFCHR | (stx->stx_mode & 07777);
	stx->stx_rdev_major = major(rdev);
	stx->stx_rdev_minor = minor(rdev);
	stx->stx_size = 0;
	return 0;
}

/*
 * The rest of the calls that take a path to look up, where a program reading sysfs may pass one of the
 * classes: libc's opendir, scandir, fopen, realpath, access and readlink reach the system through libc's
 * own internal entry points, which no interposed open or stat sees, so each is taken here and handed the
 * mapped path. (libc's glob and ftw/nftw are not: their directory reads are libc-internal. fts, as find
 * has it from gnulib, opens through openat and is.)
 */
#define MAP(path)                                                              \
	char map_buf_[4096];                                                   \
	const char *mapped_ = map_path(path, map_buf_, sizeof(map_buf_));      \
	if (mapped_)                                                           \
		path = mapped_

EXPORT int access(const char *path, int mode)
{
	REAL(int, access, const char *, int);
	MAP(path);
	return real_access(path, mode);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	REAL(int, faccessat, int, const char *, int, int);
	MAP(path);
	return real_faccessat(dirfd, path, mode, flags);
}

EXPORT int euidaccess(const char *path, int mode)
{
	return faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT int eaccess(const char *path, int mode)
{
	return faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT ssize_t readlink(const char *path, char *buf, size_t len)
{
	REAL(ssize_t, readlink, const char *, char *, size_t);
	MAP(path);
	return real_readlink(path, buf, len);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
	REAL(ssize_t, readlinkat, int, const char *, char *, size_t);
	MAP(path);
	return real_readlinkat(dirfd, path, buf, len);
}

/* the fortified entry points (_FORTIFY_SOURCE) check the buffer, then look up as the plain ones */
EXPORT ssize_t __readlink_chk(const char *path, char *buf, size_t len, size_t buflen)
{
	REAL(ssize_t, __readlink_chk, const char *, char *, size_t, size_t);
	MAP(path);
	return real___readlink_chk(path, buf, len, buflen);
}

EXPORT ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t len, size_t buflen)
{
	REAL(ssize_t, __readlinkat_chk, int, const char *, char *, size_t, size_t);
	MAP(path);
	return real___readlinkat_chk(dirfd, path, buf, len, buflen);
}

/*
 * A resolved path under SYSFS_PATH (as realpath() spells it: real_sysfs) in /sys terms, in place: the
 * program asked about /sys and gets an answer it can pass back (no longer: /sys is 4 characters).
 */
static char real_sysfs[4096];
static pthread_once_t real_sysfs_once = PTHREAD_ONCE_INIT;

static void find_real_sysfs(void)
{
	char *(*rp)(const char *, char *) = (char *(*)(const char *, char *))dlsym(RTLD_NEXT, "realpath");
	pthread_once(&once, init);
	if (!rp || !rp(sysfs, real_sysfs))
		snprintf(real_sysfs, sizeof(real_sysfs), "%s", sysfs);
}

static char *as_sys(char *r)
{
	size_t n;

	pthread_once(&real_sysfs_once, find_real_sysfs);
	n = strlen(real_sysfs);
	if (r && n >= 4 && !strncmp(r, real_sysfs, n) && (r[n] == '/' || !r[n])) {
		memcpy(r, "/sys", 4);
		memmove(r + 4, r + n, strlen(r + n) + 1);
	}
	return r;
}

EXPORT char *realpath(const char *path, char *resolved)
{
	REAL(char *, realpath, const char *, char *);
	MAP(path);
	return mapped_ ? as_sys(real_realpath(path, resolved)) : real_realpath(path, resolved);
}

EXPORT char *__realpath_chk(const char *path, char *resolved, size_t len)
{
	REAL(char *, __realpath_chk, const char *, char *, size_t);
	MAP(path);
	return mapped_ ? as_sys(real___realpath_chk(path, resolved, len)) : real___realpath_chk(path, resolved, len);
}

EXPORT char *canonicalize_file_name(const char *path)
{
	return realpath(path, NULL);
}

EXPORT DIR *opendir(const char *path)
{
	REAL(DIR *, opendir, const char *);
	MAP(path);
	return real_opendir(path);
}

EXPORT int scandir(const char *path, struct dirent ***list, int (*sel)(const struct dirent *),
		   int (*cmp)(const struct dirent **, const struct dirent **))
{
	REAL(int, scandir, const char *, struct dirent ***, int (*)(const struct dirent *),
	     int (*)(const struct dirent **, const struct dirent **));
	MAP(path);
	return real_scandir(path, list, sel, cmp);
}

EXPORT int scandir64(const char *path, struct dirent64 ***list, int (*sel)(const struct dirent64 *),
		     int (*cmp)(const struct dirent64 **, const struct dirent64 **))
{
	REAL(int, scandir64, const char *, struct dirent64 ***, int (*)(const struct dirent64 *),
	     int (*)(const struct dirent64 **, const struct dirent64 **));
	MAP(path);
	return real_scandir64(path, list, sel, cmp);
}

/* fopen, fopen64: an empty GID entry's attribute is a stream whose reads fail as sysfs's (empty_gid_attr) */
#define FOPEN(name)                                                            \
	EXPORT FILE *name(const char *path, const char *mode)                  \
	{                                                                      \
		REAL(FILE *, name, const char *, const char *);                \
		MAP(path);                                                     \
		FILE *f = real_##name(path, mode);                             \
		int fd;                                                        \
		if (!f && (fd = empty_gid_attr(path, -1, strchr(mode, 'e') != NULL)) >= 0 && !(f = fdopen(fd, mode))) \
			syscall(SYS_close, fd);                                \
		return f;                                                      \
	}
FOPEN(fopen)
FOPEN(fopen64)

/* the extended attributes: `ls -l` asks for each file's (an SELinux label, ACLs), and ENOENT there is an error to it */
EXPORT ssize_t getxattr(const char *path, const char *name, void *value, size_t size)
{
	REAL(ssize_t, getxattr, const char *, const char *, void *, size_t);
	MAP(path);
	return real_getxattr(path, name, value, size);
}

EXPORT ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
{
	REAL(ssize_t, lgetxattr, const char *, const char *, void *, size_t);
	MAP(path);
	return real_lgetxattr(path, name, value, size);
}

EXPORT ssize_t listxattr(const char *path, char *list, size_t size)
{
	REAL(ssize_t, listxattr, const char *, char *, size_t);
	MAP(path);
	return real_listxattr(path, list, size);
}

EXPORT ssize_t llistxattr(const char *path, char *list, size_t size)
{
	REAL(ssize_t, llistxattr, const char *, char *, size_t);
	MAP(path);
	return real_llistxattr(path, list, size);
}

EXPORT int chdir(const char *path)
{
	REAL(int, chdir, const char *);
	MAP(path);
	return real_chdir(path);
}

EXPORT int socket(int domain, int type, int protocol)
{
	REAL(int, socket, int, int, int);
	if (domain == AF_NETLINK && protocol == NETLINK_RDMA)
		return errno = EPROTONOSUPPORT, -1;
	return real_socket(domain, type, protocol);
}

EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
	struct dev_fd *d = tracked(fd);
	REAL(ssize_t, write, int, const void *, size_t);
	if (!d)
		return real_write(fd, buf, len);
	return d->cm_cmd >= 0 ? cm_command(d, fd, buf, len) : command(d, fd, buf, len);
}

/* a device file has no read (the kernel's uverbs file does not either) */
EXPORT ssize_t read(int fd, void *buf, size_t len)
{
	REAL(ssize_t, read, int, void *, size_t);
	if (tracked(fd))
		return errno = EINVAL, -1;
	ssize_t n = real_read(fd, buf, len);
	if (n > 0 && fd >= 0 && fd < MAX_FDS && (chan_token[fd] || async_fd[fd]))
		events_read(buf, n, async_fd[fd]);
	return n;
}

/* a device file's queue at `off` (the offset a create command answered with): the daemon hands over its memfd */
static void *map_queue(struct dev_fd *d, void *addr, size_t len, int prot, int flags, off_t off)
{
	struct fd_resp r;
	int q;

	if (d->cm_cmd >= 0) /* the rdma_cm file has no mmap */
		return errno = ENODEV, MAP_FAILED;
	if (exchange(FD_GET_QUEUE, 0, (uint64_t)off, NULL, 0, &r, &q))
		return MAP_FAILED;
	if (q < 0 || len > r.size) {
		if (q >= 0)
			syscall(SYS_close, q);
		return errno = EINVAL, MAP_FAILED;
	}
	void *p = (void *)syscall(SYS_mmap, addr, len, prot, flags, q, (off_t)r.offset);
	int e = errno;
	if (p != MAP_FAILED)
		sq_mapped(d, (uint64_t)off, p, len);
	syscall(SYS_close, q);
	errno = e;
	return p;
}

/*
 * mmap() of a device file maps one of its queues, the queue memfd mapped in its place. Any other goes
 * straight to the system call, not libc's entry point: a dlsym() here could allocate, and allocating can map.
 */
EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct dev_fd *d = tracked(fd);

	if (!d)
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	return map_queue(d, addr, len, prot, flags, off);
}

/*
 * UCX's memory hooks (libucm in its default "bistro" mode) look mmap up -- ours, first in line -- and
 * overwrite its first instructions with a jump to their own, which then maps with syscall(SYS_mmap, …).
 * So that is where a device file's mmap() arrives in a UCX program, and it is taken here too; every other
 * call passes through (six arguments, as libc's own syscall() reads them).
 */
EXPORT long syscall(long n, ...)
{
	struct dev_fd *d;
	va_list ap;
	long a[6];

	va_start(ap, n);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (n == SYS_mmap && (d = tracked((int)a[4])))
		return (long)map_queue(d, (void *)a[0], a[1], a[2], a[3], a[5]);
	if (!real_syscall)
		find_real_syscall();
	return real_syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* ENOTTY for everything but what the VFS answers for any descriptor before a driver sees it */
EXPORT int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (tracked(fd) && request != FIONBIO && request != FIOCLEX && request != FIONCLEX && request != FIOASYNC)
		return errno = ENOTTY, -1;
	REAL(int, ioctl, int, unsigned long, ...);
	return real_ioctl(fd, request, arg);
}

static void forget(int fd)
{
	struct dev_fd *d = tracked(fd);

	if (fd >= 0 && fd < MAX_FDS)
		chan_token[fd] = async_fd[fd] = 0;

	if (d) {
		fds[fd] = NULL;
		if (d->cm_cmd >= 0) {
			/*
			 * Another thread may be blocked in this file's GET_EVENT (rping's CM thread is when its main thread
			 * destroys the channel): in the kernel its write() holds the file, and it waits for ever. So the
			 * connection goes, the record stays (a few bytes per rdma_cm file closed), marked for that thread.
			 */
			pthread_mutex_lock(&d->lock);
			syscall(SYS_close, d->cm_cmd);
			d->cm_cmd = INT32_MAX;
			__atomic_store_n(&d->closed, 1, __ATOMIC_RELEASE);
			pthread_mutex_unlock(&d->lock);
			return;
		}
		pthread_mutex_destroy(&d->lock);
		free(d);
	}
}

EXPORT int close(int fd)
{
	REAL(int, close, int);
	forget(fd);
	return real_close(fd);
}

/* a descriptor duplicated over a device file's closes it (the duplicate itself is not a device file to us) */
EXPORT int dup2(int oldfd, int newfd)
{
	REAL(int, dup2, int, int);
	int r = real_dup2(oldfd, newfd);
	if (r >= 0 && oldfd != newfd)
		forget(newfd);
	return r;
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
	REAL(int, dup3, int, int, int);
	int r = real_dup3(oldfd, newfd, flags);
	if (r >= 0)
		forget(newfd);
	return r;
}

/*
 * ibv_poll_cq gives the CPU away after POLL_YIELD_EVERY empty polls in a row by one thread, as the Node
 * library's pollCq does. With a NIC a spinning poller takes nothing from the hardware it waits on; here the
 * HCA is a process (the daemon) that may share the poller's core, and a poller that spins through its whole
 * time slice keeps it off until the scheduler's tick (C ib_send_lat -s 8 with everything on one core:
 * t_typical 4 ms, the tick, against 21 us for ours). ibv_poll_cq is an inline call through the context's
 * ops.poll_cq (librxe's rxe_poll_cq), so ibv_open_device sets ours there, on contexts of our device files only.
 * ibv_context's layout is libibverbs' frozen ABI: the device pointer, then struct ibv_context_ops (poll_cq its
 * twelfth pointer), cmd_fd after the ops.
 */
#define POLL_YIELD_EVERY 16
/*
 * ... and sleeps a moment instead after POLL_SLEEP_EVERY (a multiple of it): a yield never leaves the core idle,
 * so a daemon queued on the other core behind a CPU hog waits out the hog's slice, while an idle core pulls it
 * over (the Node library's pollCq does the same; src/verbs/cq.ts has the measurements).
 */
#define POLL_SLEEP_EVERY 1024
#define CTX_POLL_CQ_AT 96
#define CTX_CMD_FD_AT 264

/*
 * Extended CQs (ibv_create_cq_ex) are polled through ibv_start_poll, an inline call through the CQ's own
 * start_poll, which librxe sets when it makes the CQ: the context's create_cq_ex (in struct verbs_context,
 * before ibv_context: 120 bytes before it, its sz 8 before) is ours too, and sets ours on each CQ it makes.
 */
#define CTX_ABI_COMPAT_AT 320
#define VCTX_SZ_BEFORE 8
#define VCTX_CREATE_CQ_EX_BEFORE 120
/* what verbs_get_ctx_op asks of sz for create_cq_ex: sizeof(struct verbs_context) 648 less its offset 200 */
#define VCTX_SZ_FOR_CREATE_CQ_EX 448
#define CQ_EX_START_POLL_AT 144

typedef int (*poll_cq_fn)(void *cq, int n, void *wc);
typedef int (*start_poll_fn)(void *cq, void *attr);
typedef void *(*create_cq_ex_fn)(void *ctx, void *attr);
static poll_cq_fn provider_poll_cq;
static start_poll_fn provider_start_poll;
static create_cq_ex_fn provider_create_cq_ex;
static __thread unsigned empty_polls;

/* a poll: it found something, or nothing (one more in a row) */
static inline void polled(int found)
{
	static const struct timespec moment = { 0, 1000 };

	if (found)
		empty_polls = 0;
	else if (++empty_polls % POLL_SLEEP_EVERY == 0)
		nanosleep(&moment, NULL);
	else if (empty_polls % POLL_YIELD_EVERY == 0)
		sched_yield();
}

static int yielding_poll_cq(void *cq, int n, void *wc)
{
	int got = provider_poll_cq(cq, n, wc);
	polled(got != 0);
	return got;
}

/* ENOENT: nothing to poll; anything else (0, or an error) ends the run of empty polls */
static int yielding_start_poll(void *cq, void *attr)
{
	int r = provider_start_poll(cq, attr);
	polled(r != ENOENT);
	return r;
}

/* sets the function pointer at p to `ours` if it holds the provider's function `*theirs` (learnt on first sight) */
static void take_over(uint8_t *p, void **theirs, void *ours)
{
	void *f, *none = NULL;

	memcpy(&f, p, sizeof(f));
	if (!f || f == ours)
		return;
	__atomic_compare_exchange_n(theirs, &none, f, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(theirs, __ATOMIC_SEQ_CST) == f)
		memcpy(p, &ours, sizeof(ours));
}

static void *yielding_create_cq_ex(void *ctx, void *attr)
{
	uint8_t *cq = provider_create_cq_ex(ctx, attr);

	if (cq)
		take_over(cq + CQ_EX_START_POLL_AT, (void **)&provider_start_poll, (void *)yielding_start_poll);
	return cq;
}

/*
 * libibverbs' own ibv_open_device. RTLD_NEXT finds it when the program links libibverbs; a library that was
 * dlopen()ed with RTLD_LOCAL (Python's extension modules for pyverbs, UCX's transport modules) is not in the
 * global scope RTLD_NEXT searches, yet its callers still reach our definition first: ask the loaded library itself.
 */
static void *(*libibverbs_open_device(void))(void *)
{
	static void *(*real)(void *);
	void *lib;

	if (!real)
		real = (void *(*)(void *))dlsym(RTLD_NEXT, "ibv_open_device");
	if (!real && (lib = dlopen("libibverbs.so.1", RTLD_LAZY | RTLD_NOLOAD))) {
		real = (void *(*)(void *))dlsym(lib, "ibv_open_device");
		dlclose(lib);
	}
	return real;
}

EXPORT void *ibv_open_device(void *device)
{
	void *(*real_ibv_open_device)(void *) = libibverbs_open_device();
	if (!real_ibv_open_device)
		return errno = ENOSYS, NULL;
	uint8_t *ctx = real_ibv_open_device(device);
	int fd;
	void *compat;
	size_t sz;

	if (!ctx)
		return NULL;
	memcpy(&fd, ctx + CTX_CMD_FD_AT, sizeof(fd));
	/* one provider serves our device files (librxe): a context of another device keeps its own functions */
	if (!tracked(fd))
		return ctx;
	take_over(ctx + CTX_POLL_CQ_AT, (void **)&provider_poll_cq, (void *)yielding_poll_cq);
	memcpy(&compat, ctx + CTX_ABI_COMPAT_AT, sizeof(compat));
	memcpy(&sz, ctx - VCTX_SZ_BEFORE, sizeof(sz));
	/* an extended context (verbs_get_ctx's test) large enough to hold create_cq_ex */
	if (compat == (void *)UINTPTR_MAX && sz >= VCTX_SZ_FOR_CREATE_CQ_EX)
		take_over(ctx - VCTX_CREATE_CQ_EX_BEFORE, (void **)&provider_create_cq_ex, (void *)yielding_create_cq_ex);
	return ctx;
}
