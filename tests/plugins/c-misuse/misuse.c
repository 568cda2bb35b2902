/*
 * misuse.c — a C plugin that misuses the host's functions, for the tests of
 * mq-host's misuse reports and its stall watchdog. Its scenario is the
 * first word of `<own path>.plan`:
 *
 *   misuse       smtp_in_message takes control and makes every misuse the
 *                host reports, each of them twice or more (the counts are
 *                in the test, tests/tests/misuse.rs), checks that nothing
 *                changed, and resumes from a timer 0.2 s later.
 *   block-hook   smtp_in_message blocks its worker until `<own path>.release`
 *                exists (at most 60 s), for recipients starting with
 *                "block"; then returns false.
 *   block-timer  smtp_in_message takes control for "block" recipients; a
 *                0-second timer's callback blocks as above, then resumes.
 *   block-fd     smtp_in_message takes control for "block" recipients; the
 *                callback of a watcher on a ready pipe blocks as above,
 *                then unwatches and resumes.
 *
 * It logs `c-misuse <text>` lines.
 */
#include <mailerq.h>

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char scenario[64] = "none";
static char release_path[4200];

static void say(const char *format, const char *value)
{
    char text[512], line[600];
    snprintf(text, sizeof text, format, value);
    snprintf(line, sizeof line, "c-misuse %s", text);
    MQ_log(MQ_INFO, line);
}

int mq_version(void) { return MQ_API_VERSION; }

void mq_initialize(void)
{
    Dl_info info;
    if (!dladdr((void *)&scenario, &info) || !info.dli_fname) return;
    char path[4096];
    snprintf(path, sizeof path, "%s.plan", info.dli_fname);
    snprintf(release_path, sizeof release_path, "%s.release", info.dli_fname);
    FILE *plan = fopen(path, "r");
    if (!plan) return;
    if (fscanf(plan, "%63s", scenario) != 1) strcpy(scenario, "none");
    fclose(plan);
}

static int is(const char *name) { return strcmp(scenario, name) == 0; }

static int blocked_recipient(MQ_Message *message)
{
    const char *recipient = MQ_recipient(message);
    return recipient && strncmp(recipient, "block", 5) == 0;
}

/* Blocks the calling thread (the worker) until the test releases it. */
static void block(const char *where)
{
    say("blocking in %s", where);
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 6000 && access(release_path, F_OK) != 0; i++) nanosleep(&tick, NULL);
    say("released in %s", where);
}

/* ---- misuse ---------------------------------------------------------------- */

struct misuse {
    MQ_Context *context;
    MQ_Connection *connection;
    MQ_Timer *infinite;
    MQ_Timer *huge;
    MQ_Timer *fired;
    int fds[2];
};

static void mark(void *data) { say("%s timer fired", (const char *)data); }

static void after_firing(void *data)
{
    struct misuse *m = data;
    /* Not legal: this timer has fired (the host freed it before this call). */
    MQ_stopTimer(m->fired);
    MQ_resetTimer(m->fired, 1.0f);
    say("%s", "stopped and reset a fired timer");
}

static void ignore_io(MQ_IOWatcher *watcher, int fd, int events, void *data)
{
    (void)watcher;
    (void)fd;
    (void)events;
    (void)data;
}

static void check_and_resume(void *data)
{
    struct misuse *m = data;
    /* Legal: neither has fired, so they may be stopped. */
    say("%s", "stopping the infinite and the huge timer");
    MQ_stopTimer(m->infinite);
    MQ_stopTimer(m->huge);
    close(m->fds[0]);
    close(m->fds[1]);
    MQ_Connection *connection = m->connection;
    free(m);
    MQ_continue(connection);
}

static bool misuse(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    struct misuse *m = calloc(1, sizeof *m);
    if (!m || pipe(m->fds) != 0) return false;
    m->context = context;
    m->connection = connection;

    /* NULL buffers with a size: refused, nothing changes. */
    char *mime = strdup(MQ_mime(message) ? MQ_mime(message) : "");
    char *recipient = strdup(MQ_recipient(message) ? MQ_recipient(message) : "");
    const char *old_envelope = MQ_email(MQ_envelope(message));
    char *envelope = strdup(old_envelope ? old_envelope : "");
    for (int i = 0; i < 2; i++) {
        MQ_setMime(message, NULL, 5);
        MQ_setRecipient(message, NULL, 5);
        MQ_setEnvelope(message, NULL, 5);
        if (MQ_send(connection, NULL, 3) != 0) say("%s", "MQ_send(NULL, 3) returned non-zero");
    }
    if (MQ_send(connection, NULL, 0) != 0) say("%s", "MQ_send(NULL, 0) returned non-zero");
    const char *now_envelope = MQ_email(MQ_envelope(message));
    say("mime unchanged: %s", MQ_mime(message) && strcmp(MQ_mime(message), mime) == 0 ? "yes" : "no");
    say("recipient unchanged: %s",
        MQ_recipient(message) && strcmp(MQ_recipient(message), recipient) == 0 ? "yes" : "no");
    say("envelope unchanged: %s", now_envelope && strcmp(now_envelope, envelope) == 0 ? "yes" : "no");
    free(mime);
    free(recipient);
    free(envelope);

    /* Delays out of range: clamped, reported. */
    for (int i = 0; i < 2; i++) {
        MQ_Timer *infinite = MQ_startTimer(context, INFINITY, mark, "infinite");
        MQ_Timer *huge = MQ_startTimer(context, 1e30f, mark, "huge");
        if (i == 0) {
            m->infinite = infinite;
            m->huge = huge;
        } else {
            MQ_stopTimer(infinite);
            MQ_stopTimer(huge);
        }
        MQ_startTimer(context, NAN, mark, "NaN");
        MQ_startTimer(context, -1.0f, mark, "negative");
    }
    MQ_resetTimer(m->infinite, INFINITY);

    /* A stopped timer, stopped and reset again; NULL is no timer. */
    MQ_Timer *stopped = MQ_startTimer(context, 60.0f, mark, "stopped");
    MQ_stopTimer(stopped);
    MQ_stopTimer(stopped);
    MQ_resetTimer(stopped, 1.0f);
    MQ_stopTimer(NULL);

    /* A timer stopped and reset from its own callback, after it fired. */
    m->fired = MQ_startTimer(context, 0.0f, after_firing, m);

    /* Unwatching twice (and twice more); NULL is no watcher. */
    MQ_IOWatcher *watcher = MQ_ioWatch(context, m->fds[0], MQ_READ, ignore_io, NULL);
    MQ_ioUnwatch(watcher);
    MQ_ioUnwatch(watcher);
    MQ_ioUnwatch(watcher);
    MQ_ioUnwatch(NULL);

    /* No callback, no events. */
    if (MQ_ioWatch(context, m->fds[0], MQ_READ, NULL, NULL)) say("%s", "a watcher without callback");
    if (MQ_ioWatch(context, m->fds[0], 0, ignore_io, NULL)) say("%s", "a watcher without events");
    if (MQ_startTimer(context, 1.0f, NULL, NULL)) say("%s", "a timer without callback");

    /* MailerQ's libev loop: mq-host has none (twice: one report). */
    if (MQ_ev(context) || MQ_ev(context)) say("%s", "MQ_ev returned a loop");

    MQ_startTimer(context, 0.2f, check_and_resume, m);
    say("%s", "made every misuse");
    return true;
}

/* ---- blocking ---------------------------------------------------------------- */

struct held {
    MQ_Connection *connection;
    int fds[2];
};

static void block_in_timer(void *data)
{
    block("a timer callback");
    MQ_continue((MQ_Connection *)data);
}

static void block_in_fd(MQ_IOWatcher *watcher, int fd, int events, void *data)
{
    (void)fd;
    (void)events;
    struct held *h = data;
    block("an fd callback");
    MQ_ioUnwatch(watcher);
    close(h->fds[0]);
    close(h->fds[1]);
    MQ_Connection *connection = h->connection;
    free(h);
    MQ_continue(connection);
}

bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    if (is("misuse")) return misuse(context, connection, message);
    if (!blocked_recipient(message)) return false;
    if (is("block-hook")) {
        block("the hook");
        return false;
    }
    if (is("block-timer")) {
        MQ_startTimer(context, 0.0f, block_in_timer, connection);
        return true;
    }
    if (is("block-fd")) {
        struct held *h = calloc(1, sizeof *h);
        if (!h || pipe(h->fds) != 0 || write(h->fds[1], "x", 1) != 1) return false;
        h->connection = connection;
        MQ_ioWatch(context, h->fds[0], MQ_READ, block_in_fd, h);
        return true;
    }
    return false;
}
