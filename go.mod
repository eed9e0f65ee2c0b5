module github.com/aserpc/aserpc

go 1.26.8

require github.com/pebbe/zmq4 v1.4.0

require github.com/pelletier/go-toml/v2 v2.4.3 // indirect
