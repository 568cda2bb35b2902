/*
 * The C side of the hook-cost bench: one hook per measured case, each the
 * shortest way a C author does that work. Its Rust twin is
 * bench/plugins/rust-hooks; the two must keep doing the same work.
 *
 * - smtp_in_rcptto: allow-list by domain: MQ_email, a suffix check,
 *   go on (an address outside the list gets a 550 and completes from a
 *   zero timer; the bench never sends one).
 * - smtp_in_mailfrom: nothing to do: returns false.
 * - smtp_in_data: take control, go on from a zero timer
 *   (MQ_startTimer(ctx, 0, cb, conn), MQ_continue in cb).
 * - smtp_in_connect: take control, go on from a 1 ms timer.
 * - smtp_in_secure: take control, go on when an fd is readable (an
 *   eventfd that always is): MQ_ioWatch, then MQ_ioUnwatch + MQ_continue.
 * - smtp_in_authenticate: hold for 2 s on a timer (the held-memory case).
 */
#include <mailerq.h>

#include <string.h>
#include <sys/eventfd.h>

static const char allowed_suffix[] = "@example.org";

static void go_on(void *data)
{
    MQ_continue((MQ_Connection *)data);
}

static void complete(void *data)
{
    MQ_complete((MQ_Connection *)data);
}

/* Always readable: written once in mq_initialize, never read. */
static int ready_fd = -1;

int mq_version(void)
{
    return MQ_API_VERSION;
}

void mq_initialize(void)
{
    ready_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ready_fd < 0) MQ_log(MQ_CRIT, "c-hooks: no eventfd; smtp_in_secure will not resume");
}

bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    const char *email = MQ_email(address);
    size_t length = email ? strlen(email) : 0;
    size_t suffix = sizeof allowed_suffix - 1;
    if (length > suffix && memcmp(email + length - suffix, allowed_suffix, suffix) == 0) return false;
    static const char reply[] = "550 5.7.1 not here\r\n";
    MQ_send(connection, reply, sizeof reply - 1);
    /* Resumed from the loop, never inside the hook call. */
    MQ_startTimer(context, 0, complete, connection);
    return true;
}

bool mq_smtp_in_mailfrom(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    (void)context;
    (void)connection;
    (void)address;
    return false;
}

bool mq_smtp_in_data(MQ_Context *context, MQ_Connection *connection, const char *mime, size_t size)
{
    (void)mime;
    (void)size;
    MQ_startTimer(context, 0, go_on, connection);
    return true;
}

bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection)
{
    MQ_startTimer(context, 0.001f, go_on, connection);
    return true;
}

static void readable(MQ_IOWatcher *watcher, int fd, int events, void *data)
{
    (void)fd;
    (void)events;
    MQ_ioUnwatch(watcher);
    MQ_continue((MQ_Connection *)data);
}

bool mq_smtp_in_secure(MQ_Context *context, MQ_Connection *connection)
{
    MQ_ioWatch(context, ready_fd, MQ_READ, readable, connection);
    return true;
}

bool mq_smtp_in_authenticate(MQ_Context *context, MQ_Connection *connection, const char *login,
                             size_t loginsize, const char *passwd, size_t passwdsize)
{
    (void)login;
    (void)loginsize;
    (void)passwd;
    (void)passwdsize;
    MQ_startTimer(context, 2.0f, go_on, connection);
    return true;
}
