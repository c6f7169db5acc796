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
#       `message_json` (JSON text) may stand instead of `message`.
#   {"op":"broadcast_raw","stream":S,"payload":P}
#       Publishes the text P through the same adapter, unencoded (coder: nil): a message that
#       is not JSON, as a buggy writer could send.
#   {"op":"disconnect","user":U}
#       ActionCable.server.remote_connections.where(current_user: <User U>).disconnect;
#       answers the channel it published to.
#   {"op":"flood","stream":S,"count":N,"bytes":B}
#       N broadcasts of {"seq":i,"pad":"<B x's>"} (i from 1), as fast as Rails publishes.
#   {"op":"character","id":C,"override":{…}}
#       What the legacy app's BroadcastCampaignUpdateJob sends for a character: the row read
#       with ActiveRecord from DATABASE_URL, serialized as CharacterSerializer does (payloads.md
#       §1.1; no image attachments), to campaign_<campaign_id> as {"character": …}. `override`
#       replaces top-level attributes (a deliberate difference, for the shadow tests).
#   {"op":"quit"}
#
# Answers are {"ok":true,…} or {"ok":false,"error":…}. Inputs: REDIS_URL (default
# redis://127.0.0.1:6379/0; rediss:// for TLS, with REDIS_CA_FILE for a private CA),
# CHANNEL_PREFIX, APP_NAME (GlobalID app, default shot-server).

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
# TLS (rediss://) with a private CA, as a cable.yml would say `ssl_params: { ca_file: … }`.
cable[:ssl_params] = { ca_file: ENV["REDIS_CA_FILE"] } if ENV["REDIS_CA_FILE"]
ActionCable.server.config.tap do |config|
  # What Rails' engine does with config/cable.yml.
  config.cable = cable.with_indifferent_access
  config.connection_class = -> { ApplicationCable::Connection }
  config.logger = Logger.new($stderr, level: :warn)
end

# The legacy app's models, as far as CharacterSerializer reads them. Loaded on first use, so
# the other commands need no database.
def load_models
  return if defined?(Character)

  require "active_record"
  require "pg"
  ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))
  ActiveRecord::Base.logger = nil
  Object.const_set(:Character, Class.new(ActiveRecord::Base) do
    belongs_to :user, optional: true
    belongs_to :faction, optional: true
    belongs_to :juncture, optional: true
  end)
  Object.const_set(:Faction, Class.new(ActiveRecord::Base))
  Object.const_set(:Juncture, Class.new(ActiveRecord::Base))
  Object.const_set(:DbUser, Class.new(ActiveRecord::Base) { self.table_name = "users" })
  Character.belongs_to :user, class_name: "DbUser", optional: true
end

def ids(sql, id)
  ActiveRecord::Base.connection.select_values(
    ActiveRecord::Base.sanitize_sql_array([sql, id]),
  )
end

def lite(record, entity_class, *extra)
  return nil unless record

  h = { id: record.id, name: record.name }
  extra.each { |k| h[k] = record.public_send(k) }
  h[:entity_class] = entity_class
  h
end

# CharacterSerializer's attributes and associations, in its order.
def character_hash(c)
  {
    id: c.id, name: c.name, active: c.active, created_at: c.created_at, updated_at: c.updated_at,
    action_values: c.action_values, faction_id: c.faction_id, description: c.description,
    skills: c.skills, category: "character", image_url: nil, task: c.task,
    notion_page_id: c.notion_page_id, wealth: c.wealth, juncture_id: c.juncture_id,
    schtick_ids: ids("SELECT schticks.id FROM schticks JOIN character_schticks ON schticks.id = character_schticks.schtick_id WHERE character_schticks.character_id = ?", c.id),
    party_ids: ids("SELECT parties.id FROM parties JOIN memberships ON parties.id = memberships.party_id WHERE memberships.character_id = ?", c.id),
    site_ids: ids("SELECT sites.id FROM sites JOIN attunements ON sites.id = attunements.site_id WHERE attunements.character_id = ?", c.id),
    advancement_ids: ids("SELECT advancements.id FROM advancements WHERE character_id = ?", c.id),
    weapon_ids: ids("SELECT weapons.id FROM weapons JOIN carries ON weapons.id = carries.weapon_id WHERE carries.character_id = ?", c.id),
    entity_class: "Character", user_id: c.user_id, is_template: c.is_template,
    impairments: c.impairments,
    user: (u = c.user) && { id: u.id, name: u.name, email: u.email, entity_class: "User" },
    faction: lite(c.faction, "Faction"),
    juncture: lite(c.juncture, "Juncture"),
    image_positions: ActiveRecord::Base.connection.select_all(
      ActiveRecord::Base.sanitize_sql_array(["SELECT id, context, x_position, y_position, style_overrides FROM image_positions WHERE positionable_type = 'Character' AND positionable_id = ?", c.id]),
    ).to_a,
  }
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
      # `message_json`: a message given as JSON text, for values a JSON line can't carry
      # through the test's own JSON (integers beyond 64 bits).
      message = cmd.key?("message_json") ? JSON.parse(cmd["message_json"]) : cmd.fetch("message")
      ActionCable.server.broadcast(cmd.fetch("stream"), message)
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
    when "flood"
      pad = "x" * Integer(cmd.fetch("bytes", 0))
      Integer(cmd.fetch("count")).times do |i|
        ActionCable.server.broadcast(cmd.fetch("stream"), { seq: i + 1, pad: pad })
      end
      answer(ok: true)
    when "character"
      load_models
      c = Character.find(cmd.fetch("id"))
      hash = character_hash(c).merge((cmd["override"] || {}).transform_keys(&:to_sym))
      Thread.current[:published] = nil
      ActionCable.server.broadcast("campaign_#{c.campaign_id}", { character: hash })
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
