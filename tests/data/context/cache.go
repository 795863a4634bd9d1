package cache

import (
	"sync"
	"time"
)

// Entry is one cached value with its expiry.
type Entry struct {
	Value   string
	Expires time.Time
}

// Cache is a small TTL cache safe for concurrent use.
type Cache struct {
	mu      sync.Mutex
	entries map[string]Entry
}

func New() *Cache {
	return &Cache{entries: make(map[string]Entry)}
}

// Sweep drops every expired entry.
func (c *Cache) Sweep(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, entry := range c.entries {
		<|cursor|>
	}
}
