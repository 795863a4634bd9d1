#include <stdio.h>
#include <stdlib.h>

/* A fixed-size ring buffer of ints. */
typedef struct {
    int *data;
    size_t head;
    size_t len;
    size_t cap;
} ring_t;

ring_t *ring_new(size_t cap) {
    ring_t *r = malloc(sizeof *r);
    r->data = calloc(cap, sizeof *r->data);
    r->head = 0;
    r->len = 0;
    r->cap = cap;
    return r;
}

int ring_push(ring_t *r, int value) {
    if (r->len == r->cap) {
        return -1;
    }
    r->data[(r->head + r->len) % r->cap] = value;
    r->len++;
    return 0;
}

void ring_print(const ring_t *r) {
    for (size_t i = 0; i < r->len; i++) {
        printf("%d\n", <|cursor|>);
    }
}
