/* engine/tokenizer.c — see tokenizer.h for the rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

uint32_t eng_fnv1a32(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static int word_byte(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c; }

/* Calls fn for each word (lower-cased into buf, truncated to ENG_MAX_WORD bytes with *full = the
 * whole length) until fn returns non-zero. */
typedef int (*word_fn)(void *user, const char *w, size_t n, size_t full);

static void each_word(const char *text, size_t len, word_fn fn, void *user)
{
    char buf[ENG_MAX_WORD];
    size_t n = 0, full = 0;
    for (size_t i = 0; text && i <= len; i++) {
        unsigned char c = i < len ? lower((unsigned char)text[i]) : 0;
        if (i < len && word_byte(c)) {
            if (n < sizeof buf)
                buf[n++] = (char)c;
            full++;
        } else if (full) {
            if (fn(user, buf, n, full))
                return;
            n = full = 0;
        }
    }
}

typedef struct {
    int32_t *ids;
    int n, max;
    const eng_vocab *v;
} tok_state;

/* Hash mode hashes the whole word, however long: it hashes as it scans instead of via each_word. */
int eng_tokenize(const char *text, size_t len, int vocab, int32_t *ids, int max_tokens)
{
    int n = 0;
    for (int i = 0; i < max_tokens; i++)
        ids[i] = ENG_TOK_PAD;
    if (!text || vocab < 2)
        return 0;
    uint32_t h = 2166136261u;
    int inword = 0;
    for (size_t i = 0; i <= len && n < max_tokens; i++) {
        unsigned char c = i < len ? lower((unsigned char)text[i]) : 0;
        if (i < len && word_byte(c)) {
            if (!inword) {
                h = 2166136261u;
                inword = 1;
            }
            h ^= c;
            h *= 16777619u;
        } else if (inword) {
            ids[n++] = (int32_t)(1 + h % (uint32_t)(vocab - 1));
            inword = 0;
        }
    }
    return n;
}

static int vocab_word(void *user, const char *w, size_t n, size_t full)
{
    tok_state *st = user;
    int32_t id = ENG_TOK_UNK;
    if (full == n)
        for (int k = 0; k < st->v->n; k++)
            if (strlen(st->v->words[k]) == n && !memcmp(st->v->words[k], w, n)) {
                id = k + 2;
                break;
            }
    st->ids[st->n++] = id;
    return st->n >= st->max;
}

int eng_tokenize_vocab(const eng_vocab *v, const char *text, size_t len, int32_t *ids, int max_tokens)
{
    for (int i = 0; i < max_tokens; i++)
        ids[i] = ENG_TOK_PAD;
    if (max_tokens <= 0)
        return 0;
    tok_state st = {.ids = ids, .max = max_tokens, .v = v};
    each_word(text, len, vocab_word, &st);
    return st.n;
}

int eng_vocab_parse(eng_vocab *v, const char *list, int max_words, char *err, size_t errlen)
{
    memset(v, 0, sizeof v[0]);
    size_t len = strlen(list);
    v->store = malloc(len + 1);
    v->words = calloc((size_t)max_words + 1, sizeof(char *));
    if (!v->store || !v->words) {
        eng_vocab_free(v);
        snprintf(err, errlen, "vocabulary: out of memory");
        return -1;
    }
    memcpy(v->store, list, len + 1);
    for (char *p = v->store; *p;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        char *w = p;
        while (*p && *p != ' ')
            p++;
        if (*p)
            *p++ = 0;
        size_t n = strlen(w);
        int ok = n <= ENG_MAX_WORD;
        for (size_t i = 0; i < n && ok; i++)
            ok = word_byte((unsigned char)w[i]);
        for (int k = 0; k < v->n && ok; k++)
            ok = strcmp(v->words[k], w) != 0;
        if (!ok || v->n == max_words) {
            snprintf(err, errlen, "vocabulary: word %d '%.64s' is %s", v->n + 1, w,
                     v->n == max_words ? "one too many" : "not [a-z0-9]{1,64} or repeated");
            eng_vocab_free(v);
            return -1;
        }
        v->words[v->n++] = w;
    }
    return 0;
}

void eng_vocab_free(eng_vocab *v)
{
    free(v->store);
    free(v->words);
    memset(v, 0, sizeof v[0]);
}
