/* engine/tokenizer.c — see tokenizer.h for the rule. */
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

int eng_tokenize(const char *text, size_t len, int vocab, int32_t *ids, int max_tokens)
{
    int n = 0;
    for (int i = 0; i < max_tokens; i++)
        ids[i] = 0;
    if (!text || vocab < 2)
        return 0;
    uint32_t h = 2166136261u;
    int inword = 0;
    for (size_t i = 0; i <= len && n < max_tokens; i++) {
        unsigned char c = i < len ? (unsigned char)text[i] : 0;
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
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
