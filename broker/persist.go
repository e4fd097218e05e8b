package broker

import (
	"strconv"
	"strings"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// boltStore is mochi's bolt storage hook with one repair. In v2.7.9 its
// OnQosPublish stores queued (inflight) messages without their packet id
// (the badger and pebble hooks keep it), so after a restart every queued message
// comes back with id 0: they overwrite each other in the session and the resend
// is refused ("protocol violation: missing packet id"), losing the queue. The id
// is still in each record's key (IFM_<client>:<packet id>), so it is restored
// from there.
type boltStore struct {
	*bolt.Hook
}

func (h *boltStore) StoredInflightMessages() ([]storage.Message, error) {
	v, err := h.Hook.StoredInflightMessages()
	for i := range v {
		if v[i].PacketID != 0 {
			continue
		}
		k := v[i].ID
		if n, err := strconv.ParseUint(k[strings.LastIndexByte(k, ':')+1:], 10, 16); err == nil {
			v[i].PacketID = uint16(n)
		}
	}
	return v, err
}
