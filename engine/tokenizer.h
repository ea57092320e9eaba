/* engine/tokenizer.h — the word tokenizers of the small models (docs/MODEL.md §3).
 *
 * Words: lower-case ASCII; any byte that is not [a-z0-9] separates words (so UTF-8 and punctuation
 * never reach a token); at most `max_tokens` words are kept, the rest dropped; the rest of the row
 * is 0 (padding). An empty prompt gives all padding. Never fails.
 *  - hash mode (tiny-test): word -> 1 + fnv1a32(word) % (vocab - 1);
 *  - vocabulary mode (the bundled models, whose file lists its words in the "vmla.vocab" metadata):
 *    word k of the list -> k + 2, any other word -> 1 (unknown), 0 is padding.
 * Words longer than 64 bytes are hashed whole (hash mode) or unknown (vocabulary mode).
 */
#ifndef VMLA_ENGINE_TOKENIZER_H
#define VMLA_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define ENG_TOK_PAD 0
#define ENG_TOK_UNK 1
#define ENG_MAX_WORD 64

typedef struct {
    char **words; /* n words, each [a-z0-9]{1,64} */
    int n;
    char *store;
} eng_vocab;

/* Hash mode. Fills ids[0 .. max_tokens-1]; returns the number of words kept. */
int eng_tokenize(const char *text, size_t len, int vocab, int32_t *ids, int max_tokens);
uint32_t eng_fnv1a32(const char *s, size_t n);

/* Parse a space-separated word list (at most max_words words, each [a-z0-9]{1,64}, no
 * duplicates). Returns 0, or -1 with a message. Free with eng_vocab_free. */
int eng_vocab_parse(eng_vocab *v, const char *list, int max_words, char *err, size_t errlen);
void eng_vocab_free(eng_vocab *v);
/* Vocabulary mode; returns the number of words kept. */
int eng_tokenize_vocab(const eng_vocab *v, const char *text, size_t len, int32_t *ids, int max_tokens);

#endif
