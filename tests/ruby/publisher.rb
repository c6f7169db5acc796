# tests/ruby/publisher.rb: the Rails side of the bridge tests, with Rails' own code.
#
# Debian's ruby-actioncable (ActionCable 6.1) with its Redis subscription adapter
# (ruby-redis), configured the way the legacy app's config/cable.yml does it:
# `adapter: redis`, `url: $REDIS_URL`, `channel_prefix: $CHANNEL_PREFIX`
# (shot_server_production unless set). Nothing here builds a Redis message by hand: every
# PUBLISH is ActionCable's.
#
# It reads one JSON command per line on stdin and answers one JSON line per command on stdout:
#
#   {"op":"broadcast","stream":S,"message":M,"identifier":I}
#       ActionCable.server.broadcast(S, M); answers the Redis channel and payload that
#       ActionCable published and, when I is given, the frame Rails' cable would write to a
#       subscription with identifier I (its stream handler decodes the payload with
#       ActiveSupport::JSON and transmits {identifier:, message:} encoded the same way).
#   {"op":"broadcast_raw","stream":S,"payload":P}
#       Publishes the text P through the same adapter, unencoded (coder: nil): a message that
#       is not JSON, as a buggy writer could send.
#   {"op":"disconnect","user":U}
#       ActionCable.server.remote_connections.where(current_user: <User U>).disconnect;
#       answers the channel it published to.
#   {"op":"quit"}
#
# Answers are {"ok":true,…} or {"ok":false,"error":…}. Inputs: REDIS_URL (default
# redis://127.0.0.1:6379/0), CHANNEL_PREFIX, APP_NAME (GlobalID app, default shot-server).

require "json"
require "logger"
require "active_support"
require "active_support/json"
require "active_support/core_ext/hash/indifferent_access"
require "base64" # globalid uses it without requiring it
require "redis"
require "globalid"
require "action_cable"

$stdout.sync = true

REDIS_URL = ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = ENV.fetch("CHANNEL_PREFIX", "shot_server_production")
GlobalID.app = ENV.fetch("APP_NAME", "shot-server")

# The user record as the legacy app's connection sees it: GlobalID-able, so its connection
# identifier is its `to_gid_param` (Base64url of gid://<app>/User/<id>, no padding).
class User
  include GlobalID::Identification
  attr_reader :id

  def initialize(id)
    @id = id
  end

  def self.find(id)
    new(id)
  end
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user
  end
end

# Records what the adapter's Redis connection publishes (the exact channel and bytes) and
# passes it on.
module RecordPublish
  def publish(channel, message)
    Thread.current[:published] = [channel, message]
    super
  end
end
Redis.prepend(RecordPublish)

cable = { adapter: "redis", url: REDIS_URL }
cable[:channel_prefix] = PREFIX unless PREFIX.empty?
ActionCable.server.config.tap do |config|
  # What Rails' engine does with config/cable.yml.
  config.cable = cable.with_indifferent_access
  config.connection_class = -> { ApplicationCable::Connection }
  config.logger = Logger.new($stderr, level: :warn)
end

def published
  channel, payload = Thread.current[:published]
  { channel: channel, payload: payload }
end

def answer(h)
  $stdout.write(JSON.generate(h) + "\n")
end

answer(ok: true, ready: true, actioncable: ActionCable.version.to_s, redis: Redis::VERSION)

$stdin.each_line do |line|
  begin
    cmd = JSON.parse(line)
    case cmd["op"]
    when "broadcast"
      Thread.current[:published] = nil
      ActionCable.server.broadcast(cmd.fetch("stream"), cmd.fetch("message"))
      out = { ok: true }.merge(published)
      if cmd["identifier"]
        # Rails' cable: stream_from's default handler decodes with the coder, then
        # Connection#transmit encodes {identifier:, message:} with ActiveSupport::JSON.
        decoded = ActiveSupport::JSON.decode(out[:payload])
        out[:frame] = ActiveSupport::JSON.encode({ identifier: cmd["identifier"], message: decoded })
      end
      answer(out)
    when "broadcast_raw"
      Thread.current[:published] = nil
      ActionCable.server.broadcast(cmd.fetch("stream"), cmd.fetch("payload"), coder: nil)
      answer({ ok: true }.merge(published))
    when "disconnect"
      Thread.current[:published] = nil
      remote = ActionCable.server.remote_connections.where(current_user: User.new(cmd.fetch("user")))
      remote.disconnect
      answer({ ok: true }.merge(published))
    when "quit"
      answer(ok: true)
      break
    else
      answer(ok: false, error: "unknown op #{cmd["op"].inspect}")
    end
  rescue StandardError => e
    answer(ok: false, error: "#{e.class}: #{e.message}")
  end
end
