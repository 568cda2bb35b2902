/*
 * c-allowlist — a MailerQ plugin in C that accepts only the recipients on
 * an allow-list.
 *
 * The list is read once, in mq_initialize(), from the file named by the
 * environment variable MQ_ALLOWLIST_FILE: one entry per line, `#` comment
 * lines and blank lines ignored, surrounding whitespace trimmed. An entry
 * starting with `@` allows a whole domain (`@example.com`), any other entry
 * one exact address. Matching ignores ASCII case. Without the variable the
 * built-in list is `@example.com`, `@example.org`, `postmaster@localhost`.
 * A file that cannot be read allows nothing (fail closed).
 *
 * For every RCPT TO, an allowed recipient is logged and left to the next
 * plugin (the hook returns false). Any other recipient gets a
 * `550 5.7.1` reply; the plugin then takes control and completes the step
 * from a 0-second timer, so the plugins after it are skipped and the
 * resume happens on the event loop, never inside the hook call.
 *
 * The list is the only global state and is read-only after mq_initialize(),
 * so the hooks are safe on every worker thread.
 */
#include <mailerq.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const default_list[] = {
    "@example.com",
    "@example.org",
    "postmaster@localhost",
};

/* The allow-list: entries as written (trimmed). */
static char **entries;
static size_t entry_count;

/* Logs a printf-style line through MQ_log. */
__attribute__((format(printf, 2, 3)))
static void log_line(int priority, const char *format, ...)
{
    char *line = NULL;
    va_list args;
    va_start(args, format);
    int length = vasprintf(&line, format, args);
    va_end(args);
    if (length < 0) {
        MQ_log(MQ_CRIT, "c-allowlist: out of memory while logging");
        return;
    }
    MQ_log(priority, line);
    free(line);
}

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* strcasecmp() for ASCII only, whatever the locale. */
static bool ascii_equal(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        if (ascii_lower(*a) != ascii_lower(*b)) return false;
    }
    return *a == *b;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static void free_list(void)
{
    for (size_t i = 0; i < entry_count; i++) free(entries[i]);
    free(entries);
    entries = NULL;
    entry_count = 0;
}

static bool add_entry(const char *text, size_t length)
{
    char **grown = realloc(entries, (entry_count + 1) * sizeof *entries);
    if (!grown) return false;
    entries = grown;
    char *copy = strndup(text, length);
    if (!copy) return false;
    entries[entry_count++] = copy;
    return true;
}

/* Reads the list from `path`; on failure the list is left empty and the
 * failure is logged. */
static void load_file(const char *path)
{
    FILE *file = fopen(path, "r");
    if (!file) {
        log_line(MQ_CRIT, "c-allowlist: cannot read allow-list file %s: %s; "
                 "allowing no recipients (fail closed)", path, strerror(errno));
        return;
    }
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    bool ok = true;
    while (ok && (length = getline(&line, &capacity, file)) >= 0) {
        const char *start = line;
        const char *end = line + length;
        while (start < end && is_space(*start)) start++;
        while (end > start && is_space(end[-1])) end--;
        if (start == end || *start == '#') continue;
        ok = add_entry(start, (size_t)(end - start));
    }
    int error = !ok ? ENOMEM : ferror(file) ? (errno ? errno : EIO) : 0;
    free(line);
    fclose(file);
    if (error) {
        free_list();
        log_line(MQ_CRIT, "c-allowlist: cannot read allow-list file %s: %s; "
                 "allowing no recipients (fail closed)", path, strerror(error));
    }
}

static bool is_allowed(const char *email)
{
    const char *at = strrchr(email, '@');
    for (size_t i = 0; i < entry_count; i++) {
        const char *entry = entries[i];
        if (entry[0] == '@') {
            if (at && ascii_equal(at + 1, entry + 1)) return true;
        } else if (ascii_equal(email, entry)) {
            return true;
        }
    }
    return false;
}

static void complete_later(void *connection)
{
    MQ_complete(connection);
}

int mq_version(void)
{
    return MQ_API_VERSION;
}

void mq_initialize(void)
{
    const char *path = getenv("MQ_ALLOWLIST_FILE");
    if (path) {
        load_file(path);
        return;
    }
    for (size_t i = 0; i < sizeof default_list / sizeof default_list[0]; i++) {
        if (!add_entry(default_list[i], strlen(default_list[i]))) {
            free_list();
            MQ_log(MQ_CRIT, "c-allowlist: out of memory loading the default allow-list; "
                   "allowing no recipients (fail closed)");
            return;
        }
    }
}

void mq_cleanup(void)
{
    free_list();
}

bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    const char *email = MQ_email(address);
    if (email && *email && is_allowed(email)) {
        log_line(MQ_INFO, "c-allowlist: accepted %s", email);
        return false;
    }
    if (!email) email = "";

    char *reply = NULL;
    int length = asprintf(&reply, "550 5.7.1 <%s>: recipient not on the allow-list\r\n", email);
    if (length < 0) {
        MQ_log(MQ_CRIT, "c-allowlist: out of memory building a reply");
        return false;
    }
    MQ_send(connection, reply, (size_t)length);
    free(reply);
    log_line(MQ_INFO, "c-allowlist: rejected %s", email);

    /* Hand control back from the loop, never from inside this call. */
    if (!MQ_startTimer(context, 0, complete_later, connection)) {
        MQ_log(MQ_CRIT, "c-allowlist: MQ_startTimer failed; not taking control");
        return false;
    }
    return true;
}
