// The Linux Function App that runs itsmc as a custom handler (host.json starts `itsmc serve`), on a Flex
// Consumption or a Linux Consumption plan. Both scale to zero and bill per execution; Flex is the default
// because Linux Consumption retires on 30 September 2028 and Flex deploys without a package URL setting.
//
// The app has a system-assigned identity and no secret: storage, Key Vault and the Logs Ingestion API all take
// its Entra tokens (roles in modules/roles.bicep).

param name string
param planName string
param location string
param tags object

@allowed([
  'FlexConsumption'
  'Consumption'
])
param planKind string

@description('App setting name -> value. Empty values are left out: the binary treats them as unset anyway.')
param appSettings object

@description('Flex Consumption only: the blob container the platform deploys the package to.')
param deploymentContainerUrl string

@description('Flex Consumption only.')
param maximumInstanceCount int

@description('Flex Consumption only: itsmc idles at about 10 MB and peaks under 40 MB, so the smallest size.')
param instanceMemoryMB int = 512

var isFlex = planKind == 'FlexConsumption'

var appSettingsList = map(filter(items(appSettings), setting => !empty(setting.value)), setting => {
  name: setting.key
  value: setting.value
})

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: isFlex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: 'Y1'
    tier: 'Dynamic'
  }
  properties: {
    // Linux.
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    // Flex takes no `reserved` on the site (its plan says Linux); Linux Consumption wants it.
    reserved: isFlex ? null : true
    httpsOnly: true
    clientAffinityEnabled: false
    siteConfig: {
      appSettings: appSettingsList
      minTlsVersion: '1.2'
      // Flex has no FTP at all and lists ftpsState among its deprecated properties; elsewhere FTP(S) is off.
      ftpsState: isFlex ? null : 'Disabled'
    }
    // Flex's runtime, package and scale live here instead of in app settings. `custom` is the custom handler
    // stack (FUNCTIONS_WORKER_RUNTIME=custom on other plans), offered on Flex since mid-2025; the platform
    // records its version as 1.0 and refuses an empty one.
    functionAppConfig: isFlex ? {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
    } : null
  }
}

output name string = site.name
output id string = site.id
output hostName string = site.properties.defaultHostName
output principalId string = site.identity.principalId
