// Package mqttc sets up the paho MQTT 3.1.1 client that every onebox part uses:
// reconnecting, with an optional persistent session, will and credentials.
package mqttc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Will is the message the broker publishes when the client vanishes.
type Will struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Options for one client.
type Options struct {
	URL          string // tcp://host:1883, ssl://…, ws://…
	ClientID     string
	Username     string
	Password     string
	CleanSession bool          // false = persistent session (what the invoker wants)
	KeepAlive    time.Duration // default 15s
	Will         *Will
	// OnConnect runs after every (re)connect, e.g. to (re)subscribe and publish
	// retained state. It must not block for long.
	OnConnect func(mqtt.Client)
	// ManualAck: the message handler calls Message.Ack() itself once the message
	// is safely held (QoS 1 is acknowledged only then).
	ManualAck bool
	// FailFast makes the first connection attempt the only one: a client that
	// asks one question (onebox invoke) says at once that no broker answers.
	FailFast bool
	// Default handles messages that match no subscription made by this process,
	// such as those a persistent session delivers right after it connects.
	Default mqtt.MessageHandler
	Logger  *slog.Logger
}

// ClientID returns prefix followed by 8 random hex digits, such as
// ClientID("onebox-cron-") = "onebox-cron-1f0a9c3e": a default client id that
// two instances of the same part do not share.
func ClientID(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// ErrConnect is returned when the first connection cannot be made in time.
var ErrConnect = errors.New("cannot connect to the MQTT broker")

// New builds a client that reconnects by itself; it does not connect.
func New(o Options) mqtt.Client {
	if o.KeepAlive == 0 {
		o.KeepAlive = 15 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	co := mqtt.NewClientOptions().
		AddBroker(o.URL).
		SetClientID(o.ClientID).
		SetUsername(o.Username).
		SetPassword(o.Password).
		SetCleanSession(o.CleanSession).
		SetResumeSubs(!o.CleanSession).
		SetProtocolVersion(4).
		SetKeepAlive(o.KeepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetAutoReconnect(true).
		SetConnectRetry(!o.FailFast).
		SetConnectRetryInterval(500 * time.Millisecond).
		SetMaxReconnectInterval(5 * time.Second).
		SetOrderMatters(false).
		SetAutoAckDisabled(o.ManualAck).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			log.Warn("lost the MQTT broker; reconnecting", "broker", o.URL, "client", o.ClientID, "err", err)
		}).
		SetOnConnectHandler(func(c mqtt.Client) {
			log.Debug("connected to the MQTT broker", "broker", o.URL, "client", o.ClientID)
			if o.OnConnect != nil {
				o.OnConnect(c)
			}
		})
	if o.Default != nil {
		co.SetDefaultPublishHandler(o.Default)
	}
	if o.Will != nil {
		co.SetBinaryWill(o.Will.Topic, o.Will.Payload, 1, o.Will.Retained)
	}
	return mqtt.NewClient(co)
}

// Connect builds a client and waits for its first connection until ctx ends.
// The client keeps retrying in the background even after an error is returned;
// call Disconnect on it in that case.
func Connect(ctx context.Context, o Options) (mqtt.Client, error) {
	c := New(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return c, fmt.Errorf("%w at %s: %v (is it running? `onebox up` or `onebox broker` starts one; --broker-url points elsewhere)", ErrConnect, o.URL, err)
		}
		return c, nil
	case <-ctx.Done():
		return c, fmt.Errorf("%w at %s: %v (is the broker running? start one with `onebox broker` or `onebox up`)", ErrConnect, o.URL, ctx.Err())
	}
}

// Wait waits for a token until timeout and returns its error.
func Wait(t mqtt.Token, timeout time.Duration) error {
	if !t.WaitTimeout(timeout) {
		return fmt.Errorf("no answer from the MQTT broker within %s", timeout)
	}
	return t.Error()
}
