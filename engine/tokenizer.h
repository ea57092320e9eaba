/* engine/tokenizer.h — the word tokenizer of the tiny models (docs/MODEL.md §3).
 *
 * Rule: lower-case ASCII; any byte that is not [a-z0-9] separates words (so UTF-8 and punctuation
 * never reach a token); each word maps to 1 + fnv1a32(word) % (vocab - 1); at most `max_tokens`
 * words are kept, the rest dropped; the rest of the row is 0 (padding). An empty prompt gives all
 * padding. Words longer than 64 bytes are hashed whole. Never fails.
 */
#ifndef VMLA_ENGINE_TOKENIZER_H
#define VMLA_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/* Fills ids[0 .. max_tokens-1]; returns the number of words kept. */
int eng_tokenize(const char *text, size_t len, int vocab, int32_t *ids, int max_tokens);
uint32_t eng_fnv1a32(const char *s, size_t n);

#endif
