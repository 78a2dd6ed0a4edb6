"""The host's name service: container names across hosts for Docker's embedded DNS to forward to.

index (what is known: names per network, and which networks each asking address is on), answers (pure),
cache, upstreams (the host's resolvers), server (UDP and TCP)."""
