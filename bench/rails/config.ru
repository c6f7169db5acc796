# bench/rails/config.ru: the Rails ActionCable side of pgcable-bench.
#
# A minimal ActionCable server, the way a Rails app runs it, without the rest of Rails:
# - the `postgresql` subscription adapter (a broadcast is one NOTIFY on the stream's name, and
#   ActionCable LISTENs on one connection taken from ActiveRecord's pool);
# - a connection class that authenticates the same HS256 JWT as pgcable (the `token` query
#   parameter, optionally `Bearer `-prefixed) and looks the user up;
# - CampaignChannel {id}: admins, the campaign's owner and its members stream `campaign_<id>`.
#
# Started by pgcable-bench as `puma -e production -b tcp://127.0.0.1:<port> config.ru` with
# DATABASE_URL and DEVISE_JWT_SECRET_KEY set; logs at info level to stdout, like a production
# Rails app. `bench/rails/setup.sh` installs what it needs from Debian's packages.

require "logger"
require "json"
require "openssl"
require "base64"
require "active_record"
require "action_cable"

DATABASE_URL = ENV.fetch("DATABASE_URL")
JWT_SECRET = ENV.fetch("DEVISE_JWT_SECRET_KEY")
WORKER_POOL_SIZE = Integer(ENV.fetch("RAILS_CABLE_WORKERS", "4"))

LOGGER = Logger.new($stdout, level: ENV.fetch("RAILS_LOG_LEVEL", "info").to_sym)
$stdout.sync = true

# ActionCable's worker threads, the broadcast connection and the LISTEN connection (which the
# adapter removes from the pool) all come from this pool.
ActiveRecord::Base.establish_connection(DATABASE_URL + (DATABASE_URL.include?("?") ? "&" : "?") +
                                        "pool=#{WORKER_POOL_SIZE + 4}")
ActiveRecord::Base.logger = nil

class User < ActiveRecord::Base
end

class Campaign < ActiveRecord::Base
end

class CampaignMembership < ActiveRecord::Base
end

# HS256 verification as devise-jwt does it: the signature over `header.payload`, the algorithm
# named in the header, and `exp` when present.
module Hs256
  module_function

  def decode_part(part)
    JSON.parse(Base64.urlsafe_decode64(part + "=" * ((4 - part.length % 4) % 4)))
  end

  def verify(token, secret)
    header, payload, signature = token.to_s.split(".")
    return nil unless header && payload && signature
    expected = OpenSSL::HMAC.digest("SHA256", secret, "#{header}.#{payload}")
    given = Base64.urlsafe_decode64(signature + "=" * ((4 - signature.length % 4) % 4))
    return nil unless expected.bytesize == given.bytesize &&
                      OpenSSL.fixed_length_secure_compare(expected, given)
    return nil unless decode_part(header)["alg"] == "HS256"
    claims = decode_part(payload)
    return nil if claims["exp"] && claims["exp"].to_i <= Time.now.to_i
    claims
  rescue ArgumentError, JSON::ParserError
    nil
  end
end

module BenchCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user

    def connect
      self.current_user = find_verified_user || reject_unauthorized_connection
    end

    private

    def find_verified_user
      token = request.params[:token].to_s
      token = token.split(" ")[1].to_s if token.start_with?("Bearer ")
      claims = Hs256.verify(token, JWT_SECRET)
      claims && User.find_by(id: claims["sub"])
    end
  end
end

class CampaignChannel < ActionCable::Channel::Base
  def subscribed
    campaign = Campaign.find_by(id: params[:id])
    if campaign && allowed?(campaign)
      stream_from "campaign_#{campaign.id}"
    else
      reject
    end
  end

  private

  def allowed?(campaign)
    current_user.admin || campaign.user_id == current_user.id ||
      CampaignMembership.exists?(campaign_id: campaign.id, user_id: current_user.id)
  end
end

ActionCable.server.config.tap do |config|
  config.cable = { "adapter" => "postgresql" }
  config.connection_class = -> { BenchCable::Connection }
  config.logger = LOGGER
  config.worker_pool_size = WORKER_POOL_SIZE
  config.disable_request_forgery_protection = true
  config.mount_path = "/cable"
end

map "/cable" do
  run ActionCable.server
end

map "/health" do
  run ->(_env) { [200, { "content-type" => "application/json" }, ['{"status":"ok"}']] }
end
