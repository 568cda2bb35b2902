/*
 * c-allowlist — a MailerQ plugin in C that accepts only the recipients on
 * an allow-list.
 *
 * The list is read once, in mq_initialize(), from the file named by the
 * environment variable MQ_ALLOWLIST_FILE: one entry per line, `#` comment
 * lines and blank lines ignored, surrounding whitespace trimmed. An entry
 * starting with `@` allows a whole domain (`@example.com`, not its
 * subdomains), any other entry one exact address. Matching ignores ASCII
 * case. Without the variable the built-in list is `@example.com`,
 * `@example.org`, `postmaster@localhost`. A file that cannot be read allows
 * nothing (fail closed).
 *
 * For every RCPT TO the address is parsed first, by RFC 5321's Mailbox
 * grammar (parse_mailbox below, the twin of mq_plugin::Mailbox): a
 * dot-string or quoted local part, `@`, a domain of dot-separated labels
 * or an address literal, no control character, ASCII only, the RFC's
 * length limits. The decision is made on the parsed domain, never on how
 * the text ends: `victim@evil.net\n@example.com` is no example.com
 * address. An address that does not parse gets `553 5.1.3 recipient is not
 * a valid mailbox: <cause>`. An allowed recipient is logged and left to the
 * next plugin (the hook returns false). Any other gets a `550 5.7.1`
 * reply. After a 553 or a 550 the plugin takes control and completes the
 * step from a 0-second timer, so the plugins after it are skipped and the
 * resume happens on the event loop, never inside the hook call.
 *
 * The list is the only global state and is read-only after mq_initialize(),
 * so the hooks are safe on every worker thread.
 */
#include <mailerq.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* ---------------------------------------------------------------------
 * Parsing an address: RFC 5321 section 4.1.2, limits of 4.5.3.1. The
 * causes read as mq_plugin::MailboxError's, and never quote the address,
 * so they are safe in a reply and a log line.
 * ------------------------------------------------------------------- */

enum { MAX_MAILBOX = 254, MAX_LOCAL_PART = 64, MAX_LABEL = 63 };

/* Writes the cause of a refusal into why[size]; returns false. */
__attribute__((format(printf, 3, 4)))
static bool refuse(char *why, size_t size, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(why, size, format, args);
    va_end(args);
    return false;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 5322 atext. */
static bool is_atext(char c)
{
    return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static bool bad_local_part(char *why, size_t size, size_t at)
{
    return refuse(why, size, "the local part is neither dot-separated atoms nor a quoted "
                  "string (byte %zu)", at);
}

static bool bad_domain(char *why, size_t size, size_t at)
{
    return refuse(why, size, "the domain is not dot-separated labels of letters, digits and "
                  "inner hyphens (byte %zu)", at);
}

/* The local part at the start of s (printable ASCII): a quoted string or
 * dot-separated atoms. Sets *at to the `@` after it. */
static bool local_part(const char *s, size_t length, size_t *at, char *why, size_t size)
{
    if (s[0] == '"') {
        size_t i = 1;
        for (;;) {
            if (i >= length || (s[i] == '\\' && i + 1 >= length))
                return refuse(why, size, "the quoted local part has no closing quote");
            if (s[i] == '"') break;
            i += s[i] == '\\' ? 2 : 1;
        }
        if (i + 1 >= length) return refuse(why, size, "no `@` after the local part");
        if (s[i + 1] != '@') return bad_local_part(why, size, i + 1);
        *at = i + 1;
        return true;
    }
    size_t atom = 0;
    for (size_t i = 0; i < length; i++) {
        if (s[i] == '@') {
            if (i == 0) return refuse(why, size, "nothing before the `@`");
            if (atom == 0) return bad_local_part(why, size, i - 1);
            *at = i;
            return true;
        }
        if (s[i] == '.') {
            if (atom == 0) return bad_local_part(why, size, i);
            atom = 0;
        } else if (is_atext(s[i])) {
            atom++;
        } else {
            return bad_local_part(why, size, i);
        }
    }
    return refuse(why, size, "no `@` after the local part");
}

/* Four decimal numbers of 1 to 3 digits, each at most 255, with dots. */
static bool is_ipv4(const char *s, size_t n)
{
    size_t i = 0;
    for (int parts = 1;; parts++) {
        size_t digits = 0;
        unsigned value = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && digits <= 3) {
            value = value * 10 + (unsigned)(s[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || digits > 3 || value > 255) return false;
        if (i == n) return parts == 4;
        if (s[i] != '.' || parts == 4) return false;
        i++;
    }
}

/* RFC 5321 address-literal, brackets included: [IPv4], [IPv6:address] or
 * [tag:text]. */
static bool is_address_literal(const char *s, size_t n)
{
    if (n < 2 || s[0] != '[' || s[n - 1] != ']') return false;
    const char *inner = s + 1;
    size_t length = n - 2;
    const char *colon = memchr(inner, ':', length);
    if (!colon) return is_ipv4(inner, length);
    size_t tag = (size_t)(colon - inner);
    const char *rest = colon + 1;
    size_t rest_length = length - tag - 1;
    if (tag == 4 && strncasecmp(inner, "IPv6", 4) == 0) {
        char text[MAX_MAILBOX + 1];
        struct in6_addr address;
        memcpy(text, rest, rest_length);
        text[rest_length] = '\0';
        return inet_pton(AF_INET6, text, &address) == 1;
    }
    /* Standardized-tag (letters, digits, hyphens, not ending in one)
     * ":" 1*dcontent (printable but `[`, `\`, `]`). */
    if (tag == 0 || !is_alnum(inner[tag - 1]) || rest_length == 0) return false;
    for (size_t i = 0; i < tag; i++) {
        if (!is_alnum(inner[i]) && inner[i] != '-') return false;
    }
    for (size_t i = 0; i < rest_length; i++) {
        if (rest[i] < 33 || rest[i] > 126 || (rest[i] >= 91 && rest[i] <= 93)) return false;
    }
    return true;
}

/* The domain of s, from start to the end: dot-separated labels (a letter
 * or digit at both ends, letters, digits and hyphens inside, 63 bytes at
 * most) or an address literal. */
static bool domain(const char *s, size_t length, size_t start, char *why, size_t size)
{
    if (start >= length) return refuse(why, size, "nothing after the `@`");
    if (s[start] == '[') {
        if (is_address_literal(s + start, length - start)) return true;
        return refuse(why, size, "the address literal is not [IPv4], [IPv6:address] or "
                      "[tag:text]");
    }
    for (size_t label = start;;) {
        size_t end = label;
        while (end < length && s[end] != '.') end++;
        if (end == label) return bad_domain(why, size, label < length ? label : length - 1);
        if (end - label > MAX_LABEL)
            return refuse(why, size, "a domain label is longer than %d bytes (byte %zu)",
                          MAX_LABEL, label);
        for (size_t i = label; i < end; i++) {
            if (!is_alnum(s[i]) && s[i] != '-') return bad_domain(why, size, i);
        }
        if (s[label] == '-') return bad_domain(why, size, label);
        if (s[end - 1] == '-') return bad_domain(why, size, end - 1);
        if (end == length) return true;
        label = end + 1;
    }
}

/* Parses `email` as an RFC 5321 mailbox. On success *at is the `@` between
 * local part and domain; otherwise why[size] says why not. */
static bool parse_mailbox(const char *email, size_t *at, char *why, size_t size)
{
    size_t length = strlen(email);
    if (length == 0) return refuse(why, size, "the address is empty");
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)email[i];
        if (c >= 0x80)
            return refuse(why, size, "a byte outside ASCII at byte %zu (internationalized "
                          "addresses are not supported)", i);
        if (c < 0x20 || c == 0x7f)
            return refuse(why, size, "a control character (0x%02x) at byte %zu", c, i);
    }
    if (length > MAX_MAILBOX)
        return refuse(why, size, "the address is %zu bytes long, more than %d", length,
                      MAX_MAILBOX);
    if (!local_part(email, length, at, why, size)) return false;
    if (*at > MAX_LOCAL_PART)
        return refuse(why, size, "the local part is %zu bytes long, more than %d", *at,
                      MAX_LOCAL_PART);
    return domain(email, length, *at + 1, why, size);
}

/* Whether the parsed mailbox `email` (its `@` at `at`) is on the list. */
static bool is_allowed(const char *email, size_t at)
{
    for (size_t i = 0; i < entry_count; i++) {
        const char *entry = entries[i];
        if (entry[0] == '@') {
            if (ascii_equal(email + at + 1, entry + 1)) return true;
        } else if (ascii_equal(email, entry)) {
            return true;
        }
    }
    return false;
}

/* `text` with every byte that is not printable ASCII as \xHH, for a log
 * line (MailerQ writes log lines as they come); free() it. */
static char *escaped(const char *text)
{
    size_t length = strlen(text);
    char *out = malloc(length * 4 + 1);
    if (!out) return NULL;
    char *p = out;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c >= 0x7f) {
            p += sprintf(p, "\\x%02x", c);
        } else {
            *p++ = (char)c;
        }
    }
    *p = '\0';
    return out;
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
    if (!email) email = "";
    char why[200];
    size_t at = 0;
    char *reply = NULL;
    int length;
    if (!parse_mailbox(email, &at, why, sizeof why)) {
        char *shown = escaped(email);
        log_line(MQ_INFO, "c-allowlist: rejected %s: %s", shown ? shown : "(out of memory)", why);
        free(shown);
        length = asprintf(&reply, "553 5.1.3 recipient is not a valid mailbox: %s\r\n", why);
    } else if (is_allowed(email, at)) {
        log_line(MQ_INFO, "c-allowlist: accepted %s", email);
        return false;
    } else {
        /* A parsed mailbox is printable ASCII: safe in a reply and a log. */
        log_line(MQ_INFO, "c-allowlist: rejected %s", email);
        length = asprintf(&reply, "550 5.7.1 <%s>: recipient not on the allow-list\r\n", email);
    }
    if (length < 0) {
        MQ_log(MQ_CRIT, "c-allowlist: out of memory building a reply");
        return false;
    }
    MQ_send(connection, reply, (size_t)length);
    free(reply);

    /* Hand control back from the loop, never from inside this call. */
    if (!MQ_startTimer(context, 0, complete_later, connection)) {
        MQ_log(MQ_CRIT, "c-allowlist: MQ_startTimer failed; not taking control");
        return false;
    }
    return true;
}
