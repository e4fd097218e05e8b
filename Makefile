# onebox: build, cross-build for the Pi, handler tars, armv7 tests under qemu.
#   make build          ./onebox for this machine
#   make cross          dist/onebox-linux-{armv7,arm64,amd64}, static and stripped
#   make handlers-tars  dist/handlers-linux-{armv7,arm64,amd64}.tar (docker load / podman load)
#   make test-arm       armv7 unit tests and the armv7 broker under qemu-arm-static
#   make test           the README's test command (needs Docker)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GO      ?= go
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build cross handlers-tars test-arm test clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o onebox ./cmd/onebox

cross:
	VERSION=$(VERSION) scripts/cross.sh

# The Go demo handlers. The shell handler (and the busybox base) also need a
# static busybox built for the target: onebox takes /bin/busybox, the host's, so
# on an amd64 laptop add `shell` to HANDLERS for the amd64 tar only.
HANDLERS ?= hello goodbye echo inbox-ls

handlers-tars: build
	mkdir -p dist
	./onebox handlers build $(HANDLERS) --platform linux/arm/v7 -o dist/handlers-linux-armv7.tar
	./onebox handlers build $(HANDLERS) --platform linux/arm64 -o dist/handlers-linux-arm64.tar
	./onebox handlers build $(HANDLERS) --platform linux/amd64 -o dist/handlers-linux-amd64.tar

test-arm:
	scripts/test-arm.sh

test:
	$(GO) test -count=1 -timeout 40m ./...

clean:
	rm -rf dist onebox
