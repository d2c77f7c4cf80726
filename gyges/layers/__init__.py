"""The forward pass of one device's shard: attention over paged KV, sharded linears, rotary, the Llama family."""
