/*
 * probe.c — the C test probe: a MailerQ plugin whose behaviour is driven by
 * a plan file, for the host's end-to-end tests. A Rust twin speaks the same
 * protocol; keep the two in step.
 *
 * Name. The probe's name is its own file name without `.so` (found with
 * dladdr on one of its own addresses), so copies named `10-a.so` and
 * `20-b.so` are `10-a` and `20-b`.
 *
 * Plan. Read in mq_initialize from `<own path>.plan` (missing: empty plan).
 * One line per hook, `<hook> <action> [argument]`, where <hook> is a short
 * SMTP hook name (`smtp_in_rcptto`); blank lines and lines starting with
 * `#` are ignored; a later line for the same hook wins. A line that cannot
 * be used logs `probe <name> bad plan line: <line>` at MQ_CRIT.
 *
 * Actions (hooks not in the plan: `false`):
 *   false             return false
 *   continue          return true; MQ_continue from a 0-second timer
 *   complete          return true; MQ_complete from a 0-second timer
 *   retry             return true; MQ_retry from a 0-second timer
 *   retry-once        first call of this hook in this process: retry;
 *                     afterwards: false
 *   never             return true and never resume
 *   double            return true; MQ_continue twice in one timer callback
 *   thread            return true; on the loop, MQ_continue from a new
 *                     thread (joined), then MQ_continue on the loop
 *   inline            MQ_continue inside the hook, then return true
 *   delay <seconds>   return true; MQ_continue from a timer of <seconds>
 *   reject <text>     MQ_send "<text>\r\n", return true; MQ_complete from a
 *                     0-second timer
 *   exercise          run the checks for the hook's kind, return true;
 *                     MQ_continue from a 0-second timer
 *   timers, io        run the timer or the I/O exercise, return true;
 *                     MQ_continue when it finishes
 *
 * Log lines (MQ_INFO unless noted), <name> being the probe's name:
 *   probe <name> <hook>                 on entry of every hook
 *   probe <name> ok <check>
 *   probe <name> fail <check>: <detail>
 *   probe <name> <key> <value>          values read by the exercises
 *   probe <name> bad plan line: <line>  (MQ_CRIT)
 *   probe <name> cannot read plan <path>: <error>  (MQ_CRIT)
 */
#include <mailerq.h>

#include <dlfcn.h>
#include <libfastjson/json.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---------------------------------------------------------------------
 * Name and logging
 * ------------------------------------------------------------------- */

static char *own_path; /* as loaded, from dladdr */
static char *own_name; /* basename without ".so" */
static pthread_once_t name_once = PTHREAD_ONCE_INIT;

static void find_name(void)
{
    Dl_info info;
    const char *path = "probe";
    /* Any address inside this object will do; a data one keeps ISO C happy. */
    if (dladdr(&name_once, &info) && info.dli_fname) path = info.dli_fname;
    own_path = strdup(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t length = strlen(base);
    if (length > 3 && strcmp(base + length - 3, ".so") == 0) length -= 3;
    own_name = strndup(base, length);
}

static const char *name(void)
{
    pthread_once(&name_once, find_name);
    return own_name ? own_name : "probe";
}

/* Logs "probe <name> <formatted text>". */
__attribute__((format(printf, 2, 3)))
static void plog(int priority, const char *format, ...)
{
    char *text = NULL;
    va_list args;
    va_start(args, format);
    int length = vasprintf(&text, format, args);
    va_end(args);
    char *line = NULL;
    if (length < 0 || asprintf(&line, "probe %s %s", name(), text) < 0) {
        MQ_log(MQ_CRIT, "probe: out of memory while logging");
        if (length >= 0) free(text);
        return;
    }
    MQ_log(priority, line);
    free(line);
    free(text);
}

/* Logs "probe <name> ok <check>" or "probe <name> fail <check>: <detail>".
 * Returns `ok`. */
__attribute__((format(printf, 3, 4)))
static bool check(bool ok, const char *what, const char *format, ...)
{
    if (ok) {
        plog(MQ_INFO, "ok %s", what);
        return true;
    }
    char *detail = NULL;
    va_list args;
    va_start(args, format);
    int length = vasprintf(&detail, format, args);
    va_end(args);
    plog(MQ_INFO, "fail %s: %s", what, length < 0 ? "(out of memory)" : detail);
    if (length >= 0) free(detail);
    return false;
}

/* A length for "%.*s". */
static int clamp(size_t size)
{
    return size > 1000000 ? 1000000 : (int)size;
}

static const char *or_null(const char *text)
{
    return text ? text : "(null)";
}

/* ---------------------------------------------------------------------
 * Hooks and plan
 * ------------------------------------------------------------------- */

enum hook {
    SMTP_IN_CONNECT,
    SMTP_IN_SECURE,
    SMTP_IN_AUTHENTICATE,
    SMTP_IN_MAILFROM,
    SMTP_IN_RCPTTO,
    SMTP_IN_DATA,
    SMTP_IN_MESSAGE,
    SMTP_IN_CLOSE,
    SMTP_OUT_DATA,
    SMTP_OUT_SENT,
    HOOK_COUNT
};

static const char *const hook_names[HOOK_COUNT] = {
    "smtp_in_connect", "smtp_in_secure", "smtp_in_authenticate", "smtp_in_mailfrom",
    "smtp_in_rcptto",  "smtp_in_data",   "smtp_in_message",      "smtp_in_close",
    "smtp_out_data",   "smtp_out_sent",
};

enum action {
    ACT_FALSE, /* zero: the default */
    ACT_CONTINUE,
    ACT_COMPLETE,
    ACT_RETRY,
    ACT_RETRY_ONCE,
    ACT_NEVER,
    ACT_DOUBLE,
    ACT_THREAD,
    ACT_INLINE,
    ACT_DELAY,
    ACT_REJECT,
    ACT_EXERCISE,
    ACT_TIMERS,
    ACT_IO,
    ACTION_COUNT
};

enum argument { ARG_NONE, ARG_SECONDS, ARG_TEXT };

static const struct {
    const char *name;
    enum argument argument;
} actions[ACTION_COUNT] = {
    [ACT_FALSE] = {"false", ARG_NONE},       [ACT_CONTINUE] = {"continue", ARG_NONE},
    [ACT_COMPLETE] = {"complete", ARG_NONE}, [ACT_RETRY] = {"retry", ARG_NONE},
    [ACT_RETRY_ONCE] = {"retry-once", ARG_NONE}, [ACT_NEVER] = {"never", ARG_NONE},
    [ACT_DOUBLE] = {"double", ARG_NONE},     [ACT_THREAD] = {"thread", ARG_NONE},
    [ACT_INLINE] = {"inline", ARG_NONE},     [ACT_DELAY] = {"delay", ARG_SECONDS},
    [ACT_REJECT] = {"reject", ARG_TEXT},     [ACT_EXERCISE] = {"exercise", ARG_NONE},
    [ACT_TIMERS] = {"timers", ARG_NONE},     [ACT_IO] = {"io", ARG_NONE},
};

struct step {
    enum action action;
    float seconds; /* delay */
    char *text;    /* reject */
};

/* Written in mq_initialize only, read-only afterwards. */
static struct step plan[HOOK_COUNT];

/* Calls per hook, for retry-once. */
static atomic_uint calls[HOOK_COUNT];

static const char *skip_space(const char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    return s;
}

static size_t word_length(const char *s)
{
    size_t n = 0;
    while (s[n] && s[n] != ' ' && s[n] != '\t') n++;
    return n;
}

static bool word_is(const char *word, size_t length, const char *expected)
{
    return strlen(expected) == length && memcmp(word, expected, length) == 0;
}

/* Parses one trimmed, non-empty, non-comment line into `plan`. */
static bool parse_line(const char *line)
{
    const char *hook_word = line;
    size_t hook_length = word_length(hook_word);
    const char *action_word = skip_space(hook_word + hook_length);
    size_t action_length = word_length(action_word);
    const char *rest = skip_space(action_word + action_length);

    int hook = -1;
    for (int i = 0; i < HOOK_COUNT; i++) {
        if (word_is(hook_word, hook_length, hook_names[i])) hook = i;
    }
    int action = -1;
    for (int i = 0; i < ACTION_COUNT; i++) {
        if (word_is(action_word, action_length, actions[i].name)) action = i;
    }
    if (hook < 0 || action < 0) return false;

    struct step step = {.action = (enum action)action};
    switch (actions[action].argument) {
    case ARG_NONE:
        if (*rest) return false;
        break;
    case ARG_SECONDS: {
        char *end;
        errno = 0;
        double seconds = strtod(rest, &end);
        if (!*rest || *end || errno || !isfinite(seconds) || seconds < 0) return false;
        step.seconds = (float)seconds;
        break;
    }
    case ARG_TEXT:
        if (!*rest || !(step.text = strdup(rest))) return false;
        break;
    }
    free(plan[hook].text);
    plan[hook] = step;
    return true;
}

static void load_plan(void)
{
    char *path = NULL;
    if (asprintf(&path, "%s.plan", own_path ? own_path : "probe.so") < 0) return;
    FILE *file = fopen(path, "r");
    if (!file) {
        if (errno != ENOENT) {
            plog(MQ_CRIT, "cannot read plan %s: %s", path, strerror(errno));
        }
        free(path);
        return;
    }
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    while ((length = getline(&line, &capacity, file)) >= 0) {
        while (length > 0 && strchr(" \t\r\n", line[length - 1])) line[--length] = '\0';
        const char *start = skip_space(line);
        if (!*start || *start == '#') continue;
        if (!parse_line(start)) plog(MQ_CRIT, "bad plan line: %s", start);
    }
    if (ferror(file)) plog(MQ_CRIT, "cannot read plan %s: %s", path, strerror(errno));
    free(line);
    fclose(file);
    free(path);
}

/* ---------------------------------------------------------------------
 * Resuming from the loop
 * ------------------------------------------------------------------- */

struct resume {
    MQ_Connection *connection;
    enum action how; /* ACT_CONTINUE, _COMPLETE, _RETRY, _DOUBLE or _THREAD */
};

static void *continue_from_thread(void *connection)
{
    MQ_continue(connection); /* the host must refuse this: wrong thread */
    return NULL;
}

static void resume_now(void *data)
{
    struct resume *resume = data;
    MQ_Connection *connection = resume->connection;
    enum action how = resume->how;
    free(resume);
    switch (how) {
    case ACT_COMPLETE:
        MQ_complete(connection);
        break;
    case ACT_RETRY:
        MQ_retry(connection);
        break;
    case ACT_DOUBLE:
        MQ_continue(connection);
        MQ_continue(connection); /* the host must ignore this one */
        break;
    case ACT_THREAD: {
        pthread_t thread;
        int error = pthread_create(&thread, NULL, continue_from_thread, connection);
        if (error) {
            plog(MQ_INFO, "fail thread: pthread_create: %s", strerror(error));
        } else {
            pthread_join(thread, NULL);
        }
        MQ_continue(connection);
        break;
    }
    default:
        MQ_continue(connection);
        break;
    }
}

/* Arranges `how` for `connection` after `seconds` on the loop. Returns
 * whether the hook may take control (false if no timer could be started:
 * nobody would hand control back). */
static bool resume_later(MQ_Context *context, MQ_Connection *connection, enum action how,
                         float seconds)
{
    struct resume *resume = malloc(sizeof *resume);
    if (!resume) {
        plog(MQ_INFO, "fail resume: out of memory");
        return false;
    }
    *resume = (struct resume){connection, how};
    if (!MQ_startTimer(context, seconds, resume_now, resume)) {
        free(resume);
        plog(MQ_INFO, "fail resume: MQ_startTimer returned NULL");
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------------
 * Exercises by hook kind
 * ------------------------------------------------------------------- */

/* Everything a hook was called with. */
struct call {
    enum hook hook;
    MQ_Context *context;
    MQ_Connection *connection;
    MQ_Address *address;   /* mailfrom, rcptto */
    MQ_Message *message;   /* message hooks */
    const char *data;      /* smtp_in_data: mime; authenticate: login */
    size_t size;
    const char *passwd;    /* authenticate */
    size_t passwdsize;
};

static unsigned *bump_counter(void *current, bool *fresh)
{
    unsigned *counter = current;
    *fresh = counter == NULL;
    if (*fresh) {
        counter = malloc(sizeof *counter);
        if (!counter) return NULL;
        *counter = 0;
    }
    ++*counter;
    return counter;
}

static void exercise_connection(const struct call *c)
{
    plog(MQ_INFO, "fd %d", MQ_fileDescriptor(c->connection));

    char *greeting = NULL;
    int length = asprintf(&greeting, "250-probe %s\r\n", name());
    if (length >= 0) {
        size_t sent = MQ_send(c->connection, greeting, (size_t)length);
        plog(MQ_INFO, "sent %zu", sent);
        free(greeting);
    }

    plog(MQ_INFO, "authenticated %d", MQ_authenticated(c->connection) ? 1 : 0);
    plog(MQ_INFO, "secure %d", MQ_secure(c->connection) ? 1 : 0);
    MQ_setAuthenticated(c->connection, true);
    check(MQ_authenticated(c->connection), "set-authenticated",
          "MQ_authenticated is false after MQ_setAuthenticated(true)");

    bool fresh;
    unsigned *counter = bump_counter(MQ_connectionData(c->connection), &fresh);
    if (counter) {
        if (fresh) MQ_setConnectionData(c->connection, counter);
        plog(MQ_INFO, "connection-data %u", *counter);
    }
    counter = bump_counter(MQ_contextData(c->context), &fresh);
    if (counter) {
        if (fresh) MQ_setContextData(c->context, counter);
        plog(MQ_INFO, "context-data %u", *counter);
    }
}

static void exercise_authenticate(const struct call *c)
{
    const char *login = c->data ? c->data : "";
    size_t loginsize = c->data ? c->size : 0;
    const char *passwd = c->passwd ? c->passwd : "";
    size_t passwdsize = c->passwd ? c->passwdsize : 0;
    plog(MQ_INFO, "login %.*s", clamp(loginsize), login);
    plog(MQ_INFO, "password %.*s", clamp(passwdsize), passwd);
    if (word_is(login, loginsize, "good")) MQ_setAuthenticated(c->connection, true);
    if (word_is(login, loginsize, "bad")) MQ_setAuthenticated(c->connection, false);
}

static void exercise_address(const struct call *c)
{
    plog(MQ_INFO, "email %s", or_null(MQ_email(c->address)));
    plog(MQ_INFO, "local %d", MQ_addressLocal(c->address) ? 1 : 0);
    MQ_setAddressLocal(c->address, true);
    check(MQ_addressLocal(c->address), "address-local",
          "MQ_local is false after MQ_setLocal(true) on the address");
}

static void exercise_data(const struct call *c)
{
    const char *mime = c->data ? c->data : "";
    size_t size = c->data ? c->size : 0;
    size_t first = 0;
    while (first < size && mime[first] != '\n') first++;
    if (first > 0 && mime[first - 1] == '\r') first--;
    plog(MQ_INFO, "mime-size %zu", size);
    plog(MQ_INFO, "mime-first %.*s", clamp(first), mime);
}

static const char *envelope_email(MQ_Message *message)
{
    MQ_Address *envelope = MQ_envelope(message);
    return envelope ? MQ_email(envelope) : NULL;
}

static void check_text(const char *what, const char *expected, const char *got)
{
    check(got && strcmp(expected, got) == 0, what, "expected %s, got %s", expected,
          or_null(got));
}

static void exercise_message(const struct call *c)
{
    MQ_Message *message = c->message;
    struct fjson_object *json = MQ_json(message);
    plog(MQ_INFO, "json %s",
         json ? fjson_object_to_json_string_ext(json, FJSON_TO_STRING_PLAIN) : "(null)");
    plog(MQ_INFO, "envelope %s", or_null(envelope_email(message)));
    plog(MQ_INFO, "recipient %s", or_null(MQ_recipient(message)));
    const char *mime = MQ_mime(message);
    plog(MQ_INFO, "mime-size %lld", mime ? (long long)strlen(mime) : -1LL);
    bool local = MQ_local(message);
    plog(MQ_INFO, "local %d", local ? 1 : 0);

    static const char envelope[] = "probe-envelope@example.org";
    static const char recipient[] = "probe-recipient@example.org";
    MQ_setEnvelope(message, envelope, strlen(envelope));
    check_text("set-envelope", envelope, envelope_email(message));
    MQ_setRecipient(message, recipient, strlen(recipient));
    check_text("set-recipient", recipient, MQ_recipient(message));

    /* Build the new MIME before setting it: setting may free the old one. */
    char *new_mime = NULL;
    int length = asprintf(&new_mime, "X-Probe: %s\r\n%s", name(), mime ? mime : "");
    if (length >= 0) {
        MQ_setMime(message, new_mime, (size_t)length);
        const char *got = MQ_mime(message);
        check(got && strlen(got) == (size_t)length && memcmp(got, new_mime, (size_t)length) == 0,
              "set-mime", "expected %d bytes starting with X-Probe, got %lld bytes", length,
              got ? (long long)strlen(got) : -1LL);
        free(new_mime);
    } else {
        check(false, "set-mime", "out of memory");
    }

    MQ_setLocal(message, !local);
    bool now = MQ_local(message);
    check(now == !local, "set-local", "expected %d, got %d", !local ? 1 : 0, now ? 1 : 0);
}

static void exercise(const struct call *c)
{
    switch (c->hook) {
    case SMTP_IN_CONNECT:
    case SMTP_IN_SECURE:
    case SMTP_IN_CLOSE:
        exercise_connection(c);
        break;
    case SMTP_IN_AUTHENTICATE:
        exercise_authenticate(c);
        break;
    case SMTP_IN_MAILFROM:
    case SMTP_IN_RCPTTO:
        exercise_address(c);
        break;
    case SMTP_IN_DATA:
        exercise_data(c);
        break;
    case SMTP_IN_MESSAGE:
    case SMTP_OUT_DATA:
    case SMTP_OUT_SENT:
        exercise_message(c);
        break;
    case HOOK_COUNT:
        break;
    }
}

/* ---------------------------------------------------------------------
 * The timer exercise
 *
 * A at 0.01 s; B at 0.02 s, stopped at once; C at 0.5 s, reset to 0.03 s;
 * D at 0.06 s. Expected: A, C, D fire in that order and B never does.
 * ------------------------------------------------------------------- */

struct timers;

struct timer_slot {
    struct timers *owner;
    char letter;
};

struct timers {
    MQ_Connection *connection;
    struct timer_slot slots[4]; /* A, B, C, D */
    MQ_Timer *c;
    bool c_fired;
    bool b_fired;
    char order[16];
    size_t fired;
};

static void timer_fired(void *data)
{
    struct timer_slot *slot = data;
    struct timers *t = slot->owner;
    plog(MQ_INFO, "timer %c", slot->letter);
    if (t->fired + 1 < sizeof t->order) t->order[t->fired++] = slot->letter;
    if (slot->letter == 'B') t->b_fired = true;
    if (slot->letter == 'C') t->c_fired = true;
    if (slot->letter != 'D') return;

    if (t->c && !t->c_fired) MQ_stopTimer(t->c); /* its reset was lost: keep it from firing later */
    bool ok = check(strcmp(t->order, "ACD") == 0 && !t->b_fired, "timers",
                    "fired %s, expected ACD", t->order);
    MQ_Connection *connection = t->connection;
    /* On failure a stray timer might still hold `t`: keep it (tests only). */
    if (ok) free(t);
    MQ_continue(connection);
}

static bool start_timers(const struct call *c)
{
    struct timers *t = calloc(1, sizeof *t);
    if (!t) {
        check(false, "timers", "out of memory");
        return false;
    }
    t->connection = c->connection;
    for (int i = 0; i < 4; i++) t->slots[i] = (struct timer_slot){t, (char)('A' + i)};

    MQ_Timer *a = MQ_startTimer(c->context, 0.01f, timer_fired, &t->slots[0]);
    MQ_Timer *b = MQ_startTimer(c->context, 0.02f, timer_fired, &t->slots[1]);
    if (b) MQ_stopTimer(b);
    t->c = MQ_startTimer(c->context, 0.5f, timer_fired, &t->slots[2]);
    if (t->c) MQ_resetTimer(t->c, 0.03f);
    MQ_Timer *d = MQ_startTimer(c->context, 0.06f, timer_fired, &t->slots[3]);
    if (!a || !b || !t->c || !d) {
        /* Without D nobody resumes; with D the order check reports it. */
        check(false, "timers", "MQ_startTimer returned NULL");
        if (!d) return false; /* `t` stays allocated: others may still fire */
    }
    return true;
}

/* ---------------------------------------------------------------------
 * The I/O exercise
 *
 * Step 1: two read watchers on one socket, one unread byte: each must fire
 *         at least twice (level-triggered).           check io-read-two-watchers
 * Step 2: a write watcher must fire.                  check io-write
 * Step 3: a read watcher left on a socket that is then closed; a new pair
 *         (same numbers, likely) with a new read watcher must fire.
 *                                                     check io-fd-reuse
 * Step 4: unwatching the stale watcher is harmless: the new watcher fires
 *         again for a second byte.                    check io-stale-unwatch
 * Each step has a 2-second watchdog; on timeout the exercise is abandoned
 * (watchers removed, sockets closed) and the connection continues.
 * ------------------------------------------------------------------- */

enum { W_READ1, W_READ2, W_WRITE, W_STALE, W_FRESH, WATCHER_COUNT };

struct io;

struct io_slot {
    struct io *owner;
    int which;
};

struct io {
    MQ_Context *context;
    MQ_Connection *connection;
    int step;
    int fds[2];
    MQ_IOWatcher *watchers[WATCHER_COUNT];
    struct io_slot slots[WATCHER_COUNT];
    int fired[WATCHER_COUNT];
    MQ_Timer *watchdog;
};

static void io_watchdog(void *data);

static void io_unwatch(struct io *io, int which)
{
    if (io->watchers[which]) MQ_ioUnwatch(io->watchers[which]);
    io->watchers[which] = NULL;
}

static void io_close(struct io *io)
{
    for (int i = 0; i < 2; i++) {
        if (io->fds[i] >= 0) close(io->fds[i]);
        io->fds[i] = -1;
    }
}

static bool io_socketpair(struct io *io)
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, io->fds) == 0) {
        return true;
    }
    plog(MQ_INFO, "fail io: socketpair: %s", strerror(errno));
    io->fds[0] = io->fds[1] = -1;
    return false;
}

static bool io_write_byte(struct io *io)
{
    if (write(io->fds[1], "x", 1) == 1) return true;
    plog(MQ_INFO, "fail io: write in step %d: %s", io->step, strerror(errno));
    return false;
}

/* Reads the byte written by io_write_byte(). A wake-up without data (EAGAIN)
 * returns false quietly: the caller waits for the next one. */
static bool io_read_byte(struct io *io)
{
    char byte;
    ssize_t n = read(io->fds[0], &byte, 1);
    if (n == 1) return true;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    plog(MQ_INFO, "fail io: read in step %d: %s", io->step, n == 0 ? "end of file" : strerror(errno));
    return false;
}

/* Ends the exercise (done or abandoned) and hands control back. */
static void io_finish(struct io *io)
{
    if (io->watchdog) MQ_stopTimer(io->watchdog);
    for (int i = 0; i < WATCHER_COUNT; i++) io_unwatch(io, i);
    io_close(io);
    MQ_Connection *connection = io->connection;
    free(io);
    MQ_continue(connection);
}

static bool io_watch(struct io *io, int which, int fd, int events);

/* Enters `step`: a fresh watchdog, then the step's set-up. Returns false
 * if the set-up failed (the caller then finishes). */
static bool io_enter(struct io *io, int step)
{
    io->step = step;
    if (io->watchdog) MQ_stopTimer(io->watchdog);
    io->watchdog = MQ_startTimer(io->context, 2.0f, io_watchdog, io);
    if (!io->watchdog) {
        plog(MQ_INFO, "fail io: MQ_startTimer returned NULL in step %d", step);
        return false;
    }
    switch (step) {
    case 1:
        return io_socketpair(io) && io_watch(io, W_READ1, io->fds[0], MQ_READ) &&
               io_watch(io, W_READ2, io->fds[0], MQ_READ) && io_write_byte(io);
    case 2:
        return io_watch(io, W_WRITE, io->fds[1], MQ_WRITE);
    case 3:
        /* Leave the read watcher in place while its socket goes away. */
        if (!io_watch(io, W_STALE, io->fds[0], MQ_READ)) return false;
        io_close(io);
        return io_socketpair(io) && io_watch(io, W_FRESH, io->fds[0], MQ_READ) &&
               io_write_byte(io);
    case 4:
        /* The stale watcher's socket is gone: unwatching must not hurt the
         * new watcher that (likely) has the same fd number. */
        io_unwatch(io, W_STALE);
        return io_write_byte(io);
    }
    return false;
}

static void io_next(struct io *io, int step)
{
    if (!io_enter(io, step)) io_finish(io);
}

static void io_ready(MQ_IOWatcher *watcher, int fd, int events, void *data)
{
    (void)watcher;
    (void)fd;
    (void)events;
    struct io_slot *slot = data;
    struct io *io = slot->owner;
    io->fired[slot->which]++;

    switch (slot->which) {
    case W_READ1:
    case W_READ2:
        if (io->step != 1 || io->fired[W_READ1] < 2 || io->fired[W_READ2] < 2) return;
        if (!io_read_byte(io)) return;
        io_unwatch(io, W_READ1);
        io_unwatch(io, W_READ2);
        plog(MQ_INFO, "ok io-read-two-watchers");
        io_next(io, 2);
        return;
    case W_WRITE:
        if (io->step != 2) return;
        io_unwatch(io, W_WRITE);
        plog(MQ_INFO, "ok io-write");
        io_next(io, 3);
        return;
    case W_STALE:
        return; /* may fire for the reused number; not a failure */
    case W_FRESH:
        if (!io_read_byte(io)) return;
        if (io->step == 3) {
            plog(MQ_INFO, "ok io-fd-reuse");
            io_next(io, 4);
        } else if (io->step == 4) {
            io_unwatch(io, W_FRESH);
            plog(MQ_INFO, "ok io-stale-unwatch");
            io_finish(io);
        }
        return;
    }
}

static bool io_watch(struct io *io, int which, int fd, int events)
{
    io->watchers[which] = MQ_ioWatch(io->context, fd, events, io_ready, &io->slots[which]);
    if (io->watchers[which]) return true;
    plog(MQ_INFO, "fail io: MQ_ioWatch returned NULL in step %d", io->step);
    return false;
}

static void io_watchdog(void *data)
{
    struct io *io = data;
    io->watchdog = NULL; /* fired: freed by the host */
    plog(MQ_INFO, "fail io: timeout in step %d", io->step);
    io_finish(io);
}

static bool start_io(const struct call *c)
{
    struct io *io = calloc(1, sizeof *io);
    if (!io) {
        plog(MQ_INFO, "fail io: out of memory");
        return false;
    }
    io->context = c->context;
    io->connection = c->connection;
    io->fds[0] = io->fds[1] = -1;
    for (int i = 0; i < WATCHER_COUNT; i++) io->slots[i] = (struct io_slot){io, i};
    if (io_enter(io, 1)) return true;
    /* Nothing is pending: clean up and do not take control. */
    if (io->watchdog) MQ_stopTimer(io->watchdog);
    for (int i = 0; i < WATCHER_COUNT; i++) io_unwatch(io, i);
    io_close(io);
    free(io);
    return false;
}

/* ---------------------------------------------------------------------
 * Running a hook
 * ------------------------------------------------------------------- */

static void free_connection_data(MQ_Connection *connection)
{
    void *data = MQ_connectionData(connection);
    if (!data) return;
    free(data);
    MQ_setConnectionData(connection, NULL);
}

static bool run(const struct call *c)
{
    plog(MQ_INFO, "%s", hook_names[c->hook]);
    const struct step *step = &plan[c->hook];

    /* What the action does before deciding about control. */
    if (step->action == ACT_EXERCISE) exercise(c);
    if (step->action == ACT_REJECT) {
        char *reply = NULL;
        int length = asprintf(&reply, "%s\r\n", step->text);
        if (length >= 0) {
            MQ_send(c->connection, reply, (size_t)length);
            free(reply);
        }
    }
    /* Last sight of the connection: free our data before any resume, which
     * (inline) may end the connection inside this call. */
    if (c->hook == SMTP_IN_CLOSE) free_connection_data(c->connection);

    switch (step->action) {
    case ACT_FALSE:
        return false;
    case ACT_CONTINUE:
    case ACT_COMPLETE:
    case ACT_RETRY:
    case ACT_DOUBLE:
    case ACT_THREAD:
        return resume_later(c->context, c->connection, step->action, 0);
    case ACT_RETRY_ONCE:
        if (atomic_fetch_add(&calls[c->hook], 1) != 0) return false;
        return resume_later(c->context, c->connection, ACT_RETRY, 0);
    case ACT_NEVER:
        return true;
    case ACT_INLINE:
        MQ_continue(c->connection);
        return true;
    case ACT_DELAY:
        return resume_later(c->context, c->connection, ACT_CONTINUE, step->seconds);
    case ACT_REJECT:
        return resume_later(c->context, c->connection, ACT_COMPLETE, 0);
    case ACT_EXERCISE:
        return resume_later(c->context, c->connection, ACT_CONTINUE, 0);
    case ACT_TIMERS:
        return start_timers(c);
    case ACT_IO:
        return start_io(c);
    case ACTION_COUNT:
        break;
    }
    return false;
}

/* ---------------------------------------------------------------------
 * The exported hooks
 * ------------------------------------------------------------------- */

int mq_version(void)
{
    return MQ_API_VERSION;
}

void mq_initialize(void)
{
    plog(MQ_INFO, "initialize");
    load_plan();
}

void mq_cleanup(void)
{
    plog(MQ_INFO, "cleanup");
    for (int i = 0; i < HOOK_COUNT; i++) {
        free(plan[i].text);
        plan[i] = (struct step){0};
    }
}

void mq_context_initialize(MQ_Context *context)
{
    (void)context;
    plog(MQ_INFO, "context_initialize");
}

void mq_context_cleanup(MQ_Context *context)
{
    plog(MQ_INFO, "context_cleanup");
    free(MQ_contextData(context));
    MQ_setContextData(context, NULL);
}

bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection)
{
    return run(&(struct call){.hook = SMTP_IN_CONNECT, .context = context, .connection = connection});
}

bool mq_smtp_in_secure(MQ_Context *context, MQ_Connection *connection)
{
    return run(&(struct call){.hook = SMTP_IN_SECURE, .context = context, .connection = connection});
}

bool mq_smtp_in_authenticate(MQ_Context *context, MQ_Connection *connection, const char *login, size_t loginsize, const char *passwd, size_t passwdsize)
{
    return run(&(struct call){.hook = SMTP_IN_AUTHENTICATE, .context = context,
                              .connection = connection, .data = login, .size = loginsize,
                              .passwd = passwd, .passwdsize = passwdsize});
}

bool mq_smtp_in_mailfrom(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    return run(&(struct call){.hook = SMTP_IN_MAILFROM, .context = context,
                              .connection = connection, .address = address});
}

bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    return run(&(struct call){.hook = SMTP_IN_RCPTTO, .context = context,
                              .connection = connection, .address = address});
}

bool mq_smtp_in_data(MQ_Context *context, MQ_Connection *connection, const char *mime, size_t size)
{
    return run(&(struct call){.hook = SMTP_IN_DATA, .context = context, .connection = connection,
                              .data = mime, .size = size});
}

bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    return run(&(struct call){.hook = SMTP_IN_MESSAGE, .context = context,
                              .connection = connection, .message = message});
}

bool mq_smtp_in_close(MQ_Context *context, MQ_Connection *connection)
{
    return run(&(struct call){.hook = SMTP_IN_CLOSE, .context = context, .connection = connection});
}

bool mq_smtp_out_data(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    return run(&(struct call){.hook = SMTP_OUT_DATA, .context = context,
                              .connection = connection, .message = message});
}

bool mq_smtp_out_sent(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    return run(&(struct call){.hook = SMTP_OUT_SENT, .context = context,
                              .connection = connection, .message = message});
}
