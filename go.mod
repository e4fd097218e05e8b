module github.com/onebox-dev/onebox

go 1.26.8

require (
	github.com/eclipse/paho.mqtt.golang v1.5.1
	go.yaml.in/yaml/v3 v3.0.6
)

require (
	github.com/gorilla/websocket v1.5.3 // indirect
	golang.org/x/net v0.44.0 // indirect
	golang.org/x/sync v0.17.0 // indirect
)
